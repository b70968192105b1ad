"""Hypothesis strategies shared by the property tests: valid readings of every vital, and junk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from monitorme.core.definitions import PipelineSpec, ValueKind

NOW_MS = 1_796_306_400_000  # 2026-12-03T14:00:00Z, the fixed "wall clock" of property tests
DAY_MS = 86_400_000

patient_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
timestamps_ms = st.integers(min_value=NOW_MS - DAY_MS + 1, max_value=NOW_MS + 60_000)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def rfc3339(draw: st.DrawFn, ts_ms: int) -> str:
    """The same instant as ``ts_ms`` written as RFC 3339 with some UTC offset."""
    tz = draw(offsets)
    moment = datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(tz)
    return moment.isoformat(timespec="milliseconds")


def _in_range(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)


def values_for(spec: PipelineSpec) -> st.SearchStrategy[Any]:
    """Valid wire values of one vital, in its stored unit."""
    if spec.kind is ValueKind.NUMBER:
        return _in_range(spec.low, spec.high) | st.integers(int(spec.low) + 1, int(spec.high) - 1)
    if spec.kind is ValueKind.ENUM:
        return st.sampled_from(spec.choices)
    if spec.kind is ValueKind.WAVEFORM:
        # float32-exact samples so the stored chunk compares equal after packing
        sample = st.floats(min_value=spec.low, max_value=spec.high, width=32, allow_nan=False)
        return st.fixed_dictionaries({
            "hz": st.sampled_from([125, 250, 360, 500]),
            "samples": st.lists(sample, min_size=1, max_size=min(spec.max_samples, 600)),
        })

    @st.composite
    def objects(draw: st.DrawFn) -> dict[str, float]:
        # Draw in the spec's order so ``ordered`` fields come out non-decreasing.
        out: dict[str, float] = {}
        floor = -float("inf")
        for name in spec.ordered or tuple(spec.fields):
            f = spec.fields[name]
            if not f.required and not draw(st.booleans()):
                continue
            out[name] = draw(_in_range(max(f.low, floor), f.high))
            floor = out[name]
        for name, f in spec.fields.items():
            if name not in out and f.required:
                out[name] = draw(_in_range(f.low, f.high))
        return out

    return objects()


@st.composite
def payloads_for(draw: st.DrawFn, spec: PipelineSpec) -> dict[str, Any]:
    """A valid payload object (before JSON encoding) of one vital."""
    ts = draw(timestamps_ms)
    doc: dict[str, Any] = {"ts": draw(st.just(ts) | rfc3339(ts)), "value": draw(values_for(spec))}
    if draw(st.booleans()):
        doc["seq"] = draw(st.integers(0, 2**53))
        doc["device"] = draw(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20))
    return doc

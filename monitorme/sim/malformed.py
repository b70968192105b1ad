"""Build malformed device messages, each tagged with the rejection reason the daemon must give."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

import numpy as np
import orjson

from monitorme.sim.model import SimMessage

__all__ = [
    "MALFORMED_REASONS",
    "interleave_malformed",
    "malformed_message",
    "malformed_messages",
]

_DAY_MS: Final = 86_400_000

# (topic vital, or the topic tail for bad_topic, and payload) for one variant at event time ts.
_Variant = Callable[[int], tuple[str, bytes]]


def _json(vital: str, body: dict[str, object]) -> tuple[str, bytes]:
    return vital, orjson.dumps(body)


def _raw(vital: str, payload: bytes) -> _Variant:
    return lambda _ts: (vital, payload)


def _text(vital: str, template: str) -> _Variant:
    # For payloads orjson refuses to write (NaN, Infinity) or invalid UTF-8 around a real ts.
    return lambda ts: (vital, template.replace("TS", str(ts)).encode())


# Each reason slug is the daemon's; variants of one reason rotate so repeated runs cover them all.
_KINDS: Final[tuple[tuple[str, tuple[_Variant, ...]], ...]] = (
    (
        "not_json",
        (
            _raw("heart_rate", b'{"ts": 1,'),
            _raw("spo2", b"hello, monitor"),
            _text("respiration", "{'ts': TS, 'value': 16}"),
        ),
    ),
    (
        "not_utf8",
        (
            _raw("heart_rate", b"\xff\xfe\xfd\x00"),
            lambda ts: ("sleep", b'{"ts": %d, "value": "\xc3\x28"}' % ts),
        ),
    ),
    (
        "not_object",
        (
            _raw("heart_rate", b"[1,2]"),
            _raw("spo2", b"97"),
            _raw("sleep", b'"asleep"'),
            _raw("temperature", b"null"),
        ),
    ),
    (
        "unknown_vital",
        (
            lambda ts: _json("blood_ketones", {"ts": ts, "value": 1.2}),
            lambda ts: _json("weight", {"ts": ts, "value": 71.5}),
        ),
    ),
    (
        "missing_field",
        (
            lambda ts: _json("heart_rate", {"ts": ts}),
            lambda _ts: _json("spo2", {"value": 97.0}),
            lambda _ts: _json("respiration", {}),
        ),
    ),
    (
        "bad_timestamp",
        (
            lambda _ts: _json("heart_rate", {"ts": "yesterday", "value": 72}),
            lambda _ts: _json("spo2", {"ts": True, "value": 97.0}),
            lambda _ts: _json("respiration", {"ts": "2024-13-45T99:00:00Z", "value": 16.0}),
        ),
    ),
    (
        "ts_in_future",
        (
            lambda ts: _json("heart_rate", {"ts": ts + 10 * _DAY_MS, "value": 72}),
            lambda ts: _json("spo2", {"ts": ts + 10 * _DAY_MS, "value": 97.0}),
        ),
    ),
    (
        "ts_too_old",
        (
            lambda ts: _json("heart_rate", {"ts": ts - 3 * _DAY_MS, "value": 72}),
            lambda ts: _json("respiration", {"ts": ts - 3 * _DAY_MS, "value": 16.0}),
        ),
    ),
    (
        "wrong_type",
        (
            lambda ts: _json("heart_rate", {"ts": ts, "value": "fast"}),
            lambda ts: _json("respiration", {"ts": ts, "value": "normal"}),
            lambda ts: _json("spo2", {"ts": ts, "value": "97%"}),
            lambda ts: _json("glucose", {"ts": ts, "value": [110]}),
        ),
    ),
    (
        "not_finite",
        (
            _text("heart_rate", '{"ts": TS, "value": NaN}'),
            _text("spo2", '{"ts": TS, "value": Infinity}'),
            _text("temperature", '{"ts": TS, "value": -Infinity}'),
        ),
    ),
    (
        "out_of_range",
        (
            lambda ts: _json("heart_rate", {"ts": ts, "value": 900}),
            lambda ts: _json("spo2", {"ts": ts, "value": 140.0}),
            lambda ts: _json("temperature", {"ts": ts, "value": 80.0}),
            lambda ts: _json("respiration", {"ts": ts, "value": -3.0}),
        ),
    ),
    (
        "bad_unit",
        (
            lambda ts: _json("temperature", {"ts": ts, "value": 310.2, "unit": "K"}),
            lambda ts: _json("glucose", {"ts": ts, "value": 1.1, "unit": "g/L"}),
        ),
    ),
    (
        "bad_shape",
        (
            lambda ts: _json("blood_pressure", {"ts": ts, "value": {"systolic": 120}}),
            lambda ts: _json("ecg", {"ts": ts, "value": {"hz": 250, "samples": "0.1,0.2"}}),
            lambda ts: _json("sleep", {"ts": ts, "value": "dozing"}),
        ),
    ),
    (
        "bad_topic",
        (
            # These give the whole topic tail after the ward; "{p}" is the patient id.
            lambda ts: _json("{p}/heart_rate/extra", {"ts": ts, "value": 72}),
            lambda ts: _json("bad id/heart_rate", {"ts": ts, "value": 72}),
            lambda ts: _json("p" * 65 + "/heart_rate", {"ts": ts, "value": 72}),
        ),
    ),
    (
        "payload_too_large",
        (lambda ts: _json("heart_rate", {"ts": ts, "value": 72, "note": "x" * 300_000}),),
    ),
)

MALFORMED_REASONS: Final = tuple(reason for reason, _ in _KINDS)


def malformed_message(ward: str, index: int, *, ts_ms: int, patients: int = 20, seed: int = 0) -> SimMessage:
    """Build the `index`-th malformed message (kinds cycle, then their variants rotate).

    Args:
        ward: ward id used in the topic.
        index: position in the cycle; `index % len(MALFORMED_REASONS)` picks the reason.
        ts_ms: event time the message belongs to; valid timestamps in payloads use it.
        patients: patients are picked among `p001`..`p{min(patients, 20)}`, so
            malformed readings land on real patients.
        seed: shifts which patient each message names.

    Returns:
        A SimMessage with `malformed_reason` set and an empty `vital`.
    """
    reason, variants = _KINDS[index % len(_KINDS)]
    variant = variants[(index // len(_KINDS)) % len(variants)]
    tail, payload = variant(ts_ms)
    pool = max(1, min(patients, 20))
    patient = f"p{(index + seed) % pool + 1:03d}"
    if reason == "bad_topic":
        topic = f"monitorme/{ward}/" + tail.replace("{p}", patient)
    else:
        topic = f"monitorme/{ward}/{patient}/{tail}"
    return SimMessage(topic, payload, ts_ms, patient, "", malformed_reason=reason)


def malformed_messages(ward: str, n: int, *, start_ms: int, seed: int = 0) -> list[SimMessage]:
    """Return `n` malformed messages cycling through every kind in `MALFORMED_REASONS`.

    Message `i` belongs to event time `start_ms + i * 10`; payload timestamps are valid and
    in range except where the reason is about the timestamp.
    """
    return [malformed_message(ward, i, ts_ms=start_ms + i * 10, seed=seed) for i in range(n)]


def interleave_malformed(
    messages: Iterator[SimMessage], ward: str, *, patients: int, seed: int = 0
) -> Iterator[SimMessage]:
    """Pass `messages` through, adding one malformed message after roughly every 100."""
    rng = np.random.default_rng([seed, 0x6D616C66])
    index = 0
    gap = int(rng.integers(80, 121))
    for count, message in enumerate(messages, start=1):
        yield message
        if count >= gap:
            yield malformed_message(ward, index, ts_ms=message.ts_ms, patients=patients, seed=seed)
            index += 1
            gap = count + int(rng.integers(80, 121))

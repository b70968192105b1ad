"""The batch paths of the analysis core against the straightforward one-at-a-time path they replace.

- ``ecg.feed_many`` (chunks of many patients analysed in one numpy pass) must give exactly what
  ``EcgAnalyzer.feed`` gives chunk by chunk, and leave every analyzer in the same state;
- ``Analyzer.on_readings`` on a whole batch (ECG pre-pass, guarded ``last`` rules) must give the very
  same alerts, scores and late counts as feeding the same readings one by one;
- ``Series.extend`` must equal ``add`` of each reading;
- ``window.median`` must return the very float ``np.median`` returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitorme.config import load_pipelines, load_rules
from monitorme.core.analysis import AnalysisOutputs, Analyzer
from monitorme.core.ecg import EcgAnalyzer, feed_many
from monitorme.core.model import PatientId, Reading, Waveform
from monitorme.core.window import Series, median

REG = load_pipelines()
RULES = load_rules(REG)


def _ecg_chunk(rng: np.random.Generator, kind: str, n: int, hz: int, phase_ms: float) -> np.ndarray:
    if kind == "flat":
        return np.zeros(n, dtype=np.float32)
    if kind == "railed":
        x = np.full(n, 5.0, dtype=np.float32)
        x[: n // 4] = rng.normal(0, 0.1, n // 4)
        return x
    t = np.arange(n) * 1000 / hz + phase_ms
    x = rng.normal(0, 0.03 if kind == "beats" else 0.3, n)
    if kind == "beats":
        for b in np.arange(0, t[-1] + 800, 800.0):
            x += 1.2 * np.exp(-(((t - b) / 12) ** 2))
    return x.astype(np.float32)


@st.composite
def ecg_streams(draw: st.DrawFn) -> list[tuple[int, int, float, np.ndarray]]:
    """(patient, ts, hz, float32 chunk) of a few patients: contiguous runs, gaps, rate changes, flat lines."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    patients = draw(st.integers(1, 5))
    clock = dict.fromkeys(range(patients), 1_000_000)
    out = []
    for _ in range(draw(st.integers(1, 40))):
        p = draw(st.integers(0, patients - 1))
        hz = draw(st.sampled_from([250, 250, 250, 125]))
        n = draw(st.sampled_from([hz, hz, hz // 2]))
        if draw(st.integers(0, 9)) == 0:
            clock[p] += draw(st.integers(1, 5000))  # a gap
        kind = draw(st.sampled_from(["beats", "beats", "beats", "noise", "flat", "railed"]))
        chunk = _ecg_chunk(rng, kind, n, hz, clock[p] % 800)
        chunk.flags.writeable = False  # as a view of a reading's bytes
        out.append((p, clock[p], float(hz), chunk))
        clock[p] += round(n * 1000 / hz)
    return out


def _state(a: EcgAnalyzer) -> tuple[Any, ...]:
    return (np.asarray(a._tail, dtype=np.float64).tolist(), a._tail_start_ms, a._hz, a._until_ms, a._last_qrs_ms,
            list(a._rr_s), list(a._amplitudes))


@settings(max_examples=80, deadline=None)
@given(stream=ecg_streams(), cut=st.integers(1, 40))
def test_feed_many_equals_feed_one_by_one(stream: list[tuple[int, int, float, np.ndarray]], cut: int) -> None:
    one = {p: EcgAnalyzer() for p, *_ in stream}
    many = {p: EcgAnalyzer() for p, *_ in stream}
    expected = [one[p].feed(ts, hz, x) for p, ts, hz, x in stream]
    got = []
    for i in range(0, len(stream), cut):
        got += feed_many([(many[p], ts, hz, x) for p, ts, hz, x in stream[i : i + cut]])
    assert got == expected
    assert {p: _state(a) for p, a in many.items()} == {p: _state(a) for p, a in one.items()}


@st.composite
def ward_batches(draw: st.DrawFn) -> list[Reading]:
    """Readings of a few patients in arrival order: vitals near and past the limits, ECG, sleep, some late."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    patients = [PatientId(f"p{i}") for i in range(draw(st.integers(1, 4)))]
    ts = dict.fromkeys(patients, 1_796_306_400_000)
    out: list[Reading] = []
    scalar = {"heart_rate": (35.0, 150.0), "spo2": (78.0, 100.0), "respiration": (0.0, 30.0),
              "temperature": (34.5, 40.0), "glucose": (40.0, 420.0)}
    for _ in range(draw(st.integers(1, 150))):
        p = draw(st.sampled_from(patients))
        ts[p] += draw(st.integers(0, 3000))
        at = ts[p] - draw(st.sampled_from([0, 0, 0, 0, 2000, 90_000]))  # some late, some beyond the allowance
        vital = draw(st.sampled_from([*scalar, "heart_rate", "spo2", "blood_pressure", "ecg", "ecg", "sleep"]))
        value: Any
        if vital in scalar:
            low, high = scalar[vital]
            value = round(float(draw(st.floats(low, high))), 1)
        elif vital == "blood_pressure":
            sys_ = draw(st.integers(70, 230))
            value = {"systolic": float(sys_), "diastolic": float(draw(st.integers(40, min(sys_, 100))))}
        elif vital == "sleep":
            value = draw(st.sampled_from(["asleep", "awake"]))
        else:
            kind = draw(st.sampled_from(["beats", "beats", "flat", "noise"]))
            value = Waveform(250.0, _ecg_chunk(rng, kind, 250, 250, at % 800).astype("<f4").tobytes())
        out.append(Reading(p, vital, at, value))
    return out


def _outputs(out: AnalysisOutputs) -> tuple[Any, ...]:
    return (out.alerts, out.scores, out.late, out.faults)


@settings(max_examples=60, deadline=None)
@given(readings=ward_batches(), cut=st.sampled_from([16, 40, 1000]))
def test_batches_give_what_one_reading_at_a_time_gives(readings: list[Reading], cut: int) -> None:
    one, batched = Analyzer("w", RULES), Analyzer("w", RULES)
    a, b = AnalysisOutputs(), AnalysisOutputs()
    for r in readings:
        one.on_readings([r], 5, a)
    for i in range(0, len(readings), cut):
        batched.on_readings(readings[i : i + cut], 5, b)
    assert _outputs(b) == _outputs(a)
    for p, ps in one.patients.items():
        other = batched.patients[p]
        assert {k: s.upto(s.newest_ts or 0)[1].tolist() for k, s in other.series.items()} == {
            k: s.upto(s.newest_ts or 0)[1].tolist() for k, s in ps.series.items()}
        assert other.rule_states == ps.rule_states
        assert other.latest == ps.latest


@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=90))
def test_median_is_numpys_float(values: list[float]) -> None:
    v = np.asarray(values)
    assert median(v) == float(np.median(v))


@given(steps=st.lists(st.integers(0, 4000), min_size=1, max_size=60), split=st.integers(0, 60),
       horizon=st.sampled_from([5_000, 60_000]))
def test_extend_equals_add_one_by_one(steps: list[int], split: int, horizon: int) -> None:
    ts = np.cumsum(np.asarray(steps, dtype=np.int64)) + 10_000
    values = np.arange(len(ts), dtype=np.float64)
    one, many = Series(horizon, 1000, capacity=4), Series(horizon, 1000, capacity=4)
    for t, v in zip(ts.tolist(), values.tolist(), strict=True):
        assert one.add(t, v)
    many.extend(ts[:split], values[:split])
    many.extend(ts[split:], values[split:], evict=False)
    many.evict_to_horizon()
    end = int(ts[-1])
    assert many.upto(end)[0].tolist() == one.upto(end)[0].tolist()
    assert many.upto(end)[1].tolist() == one.upto(end)[1].tolist()
    assert (many.newest_ts, many.last, len(many)) == (one.newest_ts, one.last, len(one))

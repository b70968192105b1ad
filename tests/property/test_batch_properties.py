"""The batch paths of the analysis core against the straightforward one-at-a-time path they replace.

- ``ecg.feed_many`` (chunks of many patients analysed in one numpy pass) must give exactly what
  ``EcgAnalyzer.feed`` gives chunk by chunk, and leave every analyzer in the same state;
- ``Analyzer.on_readings`` on a whole batch (ECG pre-pass, guarded ``last`` rules) must give the very
  same alerts, scores and late counts as feeding the same readings one by one;
- ``Series.extend`` must equal ``add`` of each reading;
- ``window.median`` must return the very float ``np.median`` returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitorme.config import load_pipelines, load_rules
from monitorme.core import analysis
from monitorme.core.analysis import AnalysisOutputs, Analyzer, PatientState
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


@contextmanager
def _batch_min(n: int) -> Iterator[None]:
    """Force (``n`` = 1) or forbid (huge ``n``) ``Analyzer._batch_pass`` for any batch size; never
    resting after a batch it found little to take from."""
    before = analysis.BATCH_MIN, analysis._BATCH_REST
    analysis.BATCH_MIN, analysis._BATCH_REST = n, 0
    try:
        yield
    finally:
        analysis.BATCH_MIN, analysis._BATCH_REST = before


_NORMAL = {"heart_rate": (60.0, 100.0), "spo2": (94.0, 99.0), "respiration": (12.0, 20.0),
           "temperature": (36.5, 37.5), "glucose": (80.0, 140.0)}
_WIDE = {"heart_rate": (30.0, 160.0), "spo2": (85.0, 95.0), "respiration": (0.0, 32.0),
         "temperature": (34.5, 40.0), "glucose": (40.0, 420.0)}
_VITALS = ["heart_rate"] * 6 + ["spo2"] * 3 + ["respiration"] * 3 + ["temperature", "glucose", "blood_pressure",
                                                                      "sleep", "ecg"]
_OVERRIDES = [
    None,
    {"spo2_low": {"threshold": 95.0}, "hr_high": {"threshold": 90.0, "delay_s": 2.0}},
    {"spo2_falling": {"threshold": -1.0, "delay_s": 5.0}, "hr_rising": {"threshold": 3.0, "delay_s": 5.0}},
    {"hr_low": {"enabled": False}, "spo2_falling": {"asleep": {"threshold": -0.5}}, "news2": {"on_oxygen": True}},
]


@st.composite
def mostly_quiet_wards(draw: st.DrawFn) -> tuple[list[Reading], dict[str, Any]]:
    """A few patients mostly inside every limit, in time order: what the batch pass takes out as arrays.
    Mixed in at drawn rates: breaches, readings late (within and beyond the allowance), sleep changes,
    blood pressure and ECG, falls of SpO2 and rises of heart rate against their baselines; plus
    per-patient overrides."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_patients = draw(st.integers(1, 4))
    patients = [PatientId(f"p{i}") for i in range(n_patients)]
    overrides = {p: draw(st.sampled_from(_OVERRIDES)) for p in patients}
    breach = draw(st.sampled_from([0.0, 0.01, 0.05, 0.3]))
    late = draw(st.sampled_from([0.0, 0.02, 0.2]))
    others = draw(st.sampled_from([0.0, 0.02, 0.1]))  # BP, ECG
    sleep = draw(st.sampled_from([0.0, 0.01, 0.05]))
    step = draw(st.sampled_from([100, 700, 3000]))
    clock = dict.fromkeys(patients, 1_796_306_400_000)
    shift = {p: 0.0 for p in patients}  # a slow drift: SpO2 falls and heart rate rises against the baseline
    out: list[Reading] = []
    for _ in range(draw(st.integers(1, 400))):
        p = patients[int(rng.integers(n_patients))]
        clock[p] += int(rng.integers(0, step))
        at = clock[p]
        if rng.random() < late:
            at -= int(rng.choice([1, 2000, 59_000, 90_000]))
        if rng.random() < 0.01:
            shift[p] = float(rng.choice([0.0, 3.0, 6.0]))
        value: Any
        if rng.random() < sleep:
            vital = "sleep"
        elif rng.random() < others:
            vital = str(rng.choice(["blood_pressure", "ecg"]))
        else:
            vital = str(rng.choice(_VITALS[:12]))
        if vital == "sleep":
            value = str(rng.choice(["asleep", "awake"]))
        elif vital == "blood_pressure":
            value = {"systolic": float(rng.integers(80, 200)), "diastolic": float(rng.integers(40, 90))}
        elif vital == "ecg":
            value = Waveform(250.0, _ecg_chunk(rng, "beats", 250, 250, at % 800).astype("<f4").tobytes())
        else:
            low, high = (_WIDE if rng.random() < breach else _NORMAL)[vital]
            value = round(float(rng.uniform(low, high)), 1)
            if vital == "spo2":
                value = max(value - shift[p], 0.0)
            elif vital == "heart_rate":
                value *= 1 + shift[p] / 20
        out.append(Reading(p, vital, at, value))
    return out, overrides


def _patient_state(ps: PatientState) -> dict[str, Any]:
    return {
        "series": {k: (s.upto(s.newest_ts or 0)[0].tolist(), s.upto(s.newest_ts or 0)[1].tolist(), s.newest_ts,
                       s.last, s.memo) for k, s in ps.series.items()},
        "rule_states": ps.rule_states, "latest": list(ps.latest.items()), "last_ts": list(ps.last_ts.items()),
        "received": list(ps.last_received_wall.items()), "open": ps.open_alerts, "asleep": ps.asleep,
        "news2": (ps.news2_ts, ps.news2_total, ps.news2),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ward=mostly_quiet_wards(), cuts=st.lists(st.integers(1, 120), min_size=1, max_size=8),
       news2=st.booleans(), ticks=st.booleans())
def test_batch_pass_gives_what_the_per_reading_path_gives(ward: tuple[list[Reading], dict[str, Any]],
                                                          cuts: list[int], news2: bool, ticks: bool) -> None:
    """``_batch_pass`` (forced for every batch) against the per-reading path (forbidden), batch by batch:
    the same alerts in the same order, scores, late counts and faults, and the same state of every
    patient (series contents, medians memo, rule states, latest values, open alerts, NEWS2)."""
    readings, overrides = ward
    one, batched = Analyzer("w", RULES, score_news2=news2), Analyzer("w", RULES, score_news2=news2)
    for analyzer in (one, batched):
        for p, thresholds in overrides.items():
            analyzer.set_patient(p, "s1", thresholds)
    a, b = AnalysisOutputs(), AnalysisOutputs()
    i, k, wall = 0, 0, 1_796_306_400_000
    while i < len(readings):
        chunk = readings[i : i + cuts[k % len(cuts)]]
        i, k, wall = i + len(chunk), k + 1, wall + 1000
        with _batch_min(10**9):
            one.on_readings(chunk, wall, a)
        with _batch_min(1):
            batched.on_readings(chunk, wall, b)
        if ticks and k % 3 == 0:  # no-data alerts, resolved by the next reading of their vital
            one.tick(wall + 200_000, a)
            batched.tick(wall + 200_000, b)
        assert _outputs(b) == _outputs(a)
        assert {p: _patient_state(ps) for p, ps in batched.patients.items()} == {
            p: _patient_state(ps) for p, ps in one.patients.items()}


def test_batch_pass_after_a_sleep_change_rebuilds_the_safe_interval() -> None:
    """A guard built asleep (SpO2 safe from 88 %) must not survive waking (safe from 90 %): 89 % (3 under
    the baseline: no fall) then starts ``spo2_low``'s delay. One pinned case of the property above,
    which rarely draws it."""
    t0 = 1_796_306_400_000
    asleep = [Reading(PatientId("p"), "sleep", t0, "asleep")]
    asleep += [Reading(PatientId("p"), "spo2", t0 + 5000 * i, 92.0) for i in range(1, 6)]
    awake = [Reading(PatientId("p"), "sleep", t0 + 30_000, "awake")]
    low = [Reading(PatientId("p"), "spo2", t0 + 30_000 + 5000 * i, 89.0) for i in range(1, 6)]
    one, batched = Analyzer("w", RULES, score_news2=False), Analyzer("w", RULES, score_news2=False)  # else
    # a possible NEWS2 score of the patient sends its readings one by one
    a, b = AnalysisOutputs(), AnalysisOutputs()
    for chunk in (asleep, awake, low):
        with _batch_min(10**9):
            one.on_readings(chunk, t0, a)
        with _batch_min(1):
            batched.on_readings(chunk, t0, b)
    assert [x.rule for x in a.alerts] == ["spo2_low"]
    assert _outputs(b) == _outputs(a)
    assert _patient_state(batched.patients["p"]) == _patient_state(one.patients["p"])

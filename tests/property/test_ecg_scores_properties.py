"""ECG detector against the beats we drew; NEWS2 parts against the RCP chart, band by band."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitorme.core.ecg import EcgAnalyzer
from monitorme.core.scores import news2, score_pulse, score_rr, score_sbp, score_spo2, score_temperature


def synth(beats_ms: list[float], duration_ms: int, hz: int, amplitude: float, noise: float,
          seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(duration_ms * hz / 1000)) * 1000 / hz
    x = 0.05 * np.sin(2 * np.pi * t / 4000) + rng.normal(0, noise, len(t))
    for b in beats_ms:
        x += amplitude * np.exp(-(((t - b) / 12) ** 2))  # R wave ~ 30 ms wide
        x += 0.25 * amplitude * np.exp(-(((t - b - 250) / 60) ** 2))  # a T wave that must not count
    return x


@settings(max_examples=60, deadline=None)
@given(rr=st.lists(st.integers(400, 1600), min_size=4, max_size=30), hz=st.sampled_from([125, 250, 360, 500]),
       amplitude=st.floats(0.5, 2.5), seed=st.integers(0, 1000), chunk_s=st.sampled_from([1, 1, 2]))
def test_detector_finds_each_drawn_beat_once_across_chunk_boundaries(
        rr: list[int], hz: int, amplitude: float, seed: int, chunk_s: int) -> None:
    beats = list(np.cumsum([700, *rr]).astype(float))
    duration = int(beats[-1] + 1500) // 1000 * 1000 + 1000
    x = synth(beats, duration, hz, amplitude, 0.01, seed)
    analyzer = EcgAnalyzer()
    found: list[int] = []
    per_chunk = hz * chunk_s
    for i in range(0, len(x) - per_chunk + 1, per_chunk):
        found += analyzer.feed(round(i * 1000 / hz), hz, x[i : i + per_chunk]).beats_ms
    detectable = [b for b in beats if b < duration - 1000 * chunk_s]  # the last chunk's end waits for the next
    assert len(found) >= len(detectable)
    matched = [min(found, key=lambda f, b=b: abs(f - b)) for b in detectable]
    assert all(abs(m - b) <= 1000 / hz + 1 for m, b in zip(matched, detectable, strict=True))
    assert len(found) == len(set(found)) <= len(beats)
    if len(detectable) >= 3 and analyzer.hr is not None:
        recent = np.diff(beats)[-10:]
        assert math.isclose(analyzer.hr, 60_000 / recent.mean(), rel_tol=0.1)


@given(amplitude=st.floats(0.0, 0.14), seed=st.integers(0, 1000))
def test_complexes_below_015_mv_are_not_qrs(amplitude: float, seed: int) -> None:
    x = synth([500.0, 1300.0, 2100.0, 2900.0], 4000, 250, amplitude, 0.0, seed)
    analyzer = EcgAnalyzer()
    found = [b for i in range(4) for b in analyzer.feed(i * 1000, 250, x[i * 250 : (i + 1) * 250]).beats_ms]
    assert found == []


def test_flat_and_railed_chunks_are_technical_not_asystole() -> None:
    analyzer = EcgAnalyzer()
    flat = analyzer.feed(0, 250, np.zeros(250))
    railed = analyzer.feed(1000, 250, np.array([5.0] * 200 + [0.1] * 50))
    assert flat.flat and flat.since_qrs_s is None
    assert railed.flat and railed.since_qrs_s is None


# The chart, as a list of (low, high, points) bands with inclusive integer (one-decimal) edges.
RR_BANDS = [(0, 8, 3), (9, 11, 1), (12, 20, 0), (21, 24, 2), (25, 60, 3)]
SPO2_SCALE1 = [(50, 91, 3), (92, 93, 2), (94, 95, 1), (96, 100, 0)]
SBP_BANDS = [(40, 90, 3), (91, 100, 2), (101, 110, 1), (111, 219, 0), (220, 300, 3)]
PULSE_BANDS = [(20, 40, 3), (41, 50, 1), (51, 90, 0), (91, 110, 1), (111, 130, 2), (131, 250, 3)]
TEMP_BANDS = [(30.0, 35.0, 3), (35.1, 36.0, 1), (36.1, 38.0, 0), (38.1, 39.0, 1), (39.1, 43.0, 2)]


def band(value: float, bands: list[tuple[float, float, int]]) -> int:
    (points,) = [p for lo, hi, p in bands if lo <= value <= hi]
    return points


@given(rr=st.integers(0, 60), spo2=st.integers(50, 100), sbp=st.integers(40, 300), pulse=st.integers(20, 250),
       temp10=st.integers(300, 430))
def test_news2_parts_follow_the_chart(rr: int, spo2: int, sbp: int, pulse: int, temp10: int) -> None:
    temp = temp10 / 10
    assert score_rr(rr) == band(rr, RR_BANDS)
    assert score_spo2(spo2) == band(spo2, SPO2_SCALE1)
    assert score_sbp(sbp) == band(sbp, SBP_BANDS)
    assert score_pulse(pulse) == band(pulse, PULSE_BANDS)
    assert score_temperature(temp) == band(temp, TEMP_BANDS)
    result = news2(rr=rr, spo2=spo2, sbp=sbp, pulse=pulse, temperature=temp)
    parts = [band(rr, RR_BANDS), band(spo2, SPO2_SCALE1), band(sbp, SBP_BANDS), band(pulse, PULSE_BANDS),
             band(temp, TEMP_BANDS)]
    assert result.total == sum(parts) <= 15  # partial: no O2 flag or ACVPU, at most 15
    assert result.partial and result.max_part == max(parts)


@given(spo2=st.integers(50, 100), on_oxygen=st.booleans())
def test_spo2_scale_2(spo2: int, on_oxygen: bool) -> None:
    expected = (3 if spo2 <= 83 else 2 if spo2 <= 85 else 1 if spo2 <= 87 else 0 if spo2 <= 92 or not on_oxygen
                else 1 if spo2 <= 94 else 2 if spo2 <= 96 else 3)
    assert score_spo2(spo2, scale=2, on_oxygen=on_oxygen) == expected


def test_missing_parameters_are_reported_not_scored_and_sleep_is_not_consciousness() -> None:
    r = news2(rr=None, spo2=97, sbp=None, pulse=80, temperature=37.0)
    assert r.missing == ("respiration", "systolic_bp") and r.total == 0 and r.partial
    full = news2(rr=16, spo2=97, sbp=120, pulse=80, temperature=37.0, on_oxygen=True, consciousness="V")
    assert full.total == 5 and not full.partial  # O2 2 + V 3

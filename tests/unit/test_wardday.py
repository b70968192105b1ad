"""Tests for monitor artifacts (model.generate_ward(artifacts=True)) and the scripted ward day."""

from __future__ import annotations

import hashlib
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pytest

from monitorme.sim.model import (
    ARTIFACT_RATES,
    ECG_HZ,
    LEADS_OFF_SHARE,
    PERIODS_MS,
    SCENARIOS,
    Effects,
    Episode,
    SimMessage,
    _Artifacts,
    generate_ward,
)
from monitorme.sim.wardday import DETERIORATION_RULES, KINDS, Deterioration, ward_day

HOUR_MS = 3_600_000
START_MS = 1_700_000_000_000  # 22:13:20 UTC: some patients fall asleep during a run
THREE_AM_MS = 1_699_930_800_000  # 2023-11-14 03:00 UTC
NOON_MS = THREE_AM_MS + 9 * HOUR_MS
FLAT_ECG = b'"samples":[' + b",".join([b"0.0"] * ECG_HZ) + b"]"

Series = dict[tuple[str, str], list[tuple[int, Any]]]


def _digest(messages: Iterable[SimMessage]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(repr((m.topic, m.payload, m.ts_ms, m.patient, m.vital, m.malformed_reason)).encode())
    return h.hexdigest()


def _decode(messages: Iterable[SimMessage]) -> Series:
    """(patient, vital) -> [(ts, value)]; an ECG chunk's value is whether it is flat (leads off)."""
    out: Series = defaultdict(list)
    for m in messages:
        if m.vital == "ecg":
            out[(m.patient, "ecg")].append((m.ts_ms, FLAT_ECG in m.payload))
        else:
            out[(m.patient, m.vital)].append((m.ts_ms, orjson.loads(m.payload)["value"]))
    return out


# -- artifacts=False: the original stream, byte for byte ---------------------------------------

# Computed with the model as it was BEFORE artifacts, per-patient episodes and the ward
# physiology were added (same arguments, same _digest): artifacts=False must not change a byte.
BEFORE_ARTIFACTS = {
    "normal": "b7c734e50429ab350ba0be536bdbfd9758a7eb27cb6c1ec2053d52fe405c490d",
    "desaturation": "2ec265183e61139b481ea358fd8191fec801a15838740121ce35edbb91760ca2",
    "fever": "1ca6f15bcccfd974ca7ea53e4d52335979d7e3ffa86630fbb0931362ce36965c",
    "bradycardia": "82eb44caf049a5c2796a61f4cd16decbea58ae2cd14adee8b670a1fbce157026",
    "dropout": "f776f410afbcabe24f54eaf2387405a4cc982e52f8e470746a210f441c776837",
    "malformed": "0869ec1ddb14962cc92153b906849a497365a94d4c08bb3b852cb40e20f86b50",
    "deterioration": "31d7c8c9ada432ff74adfdf8965f463b4fd2c8579d10f2f976e6668252bfb42a",
}
BEFORE_ARTIFACTS_NIGHT = "9b90d9dbeff855bd63f15447b529bcd840784ef2a04deb3942573c1385abc825"
BEFORE_ARTIFACTS_ENDLESS = "875618f2207562b6258896c23b4ce63d3d4d377eb0d0e9e7f3d33ff9d55f4ab4"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_artifacts_off_keeps_every_scenario_byte_identical(scenario: str) -> None:
    assert set(BEFORE_ARTIFACTS) == set(SCENARIOS)
    messages = generate_ward("w1", 2, START_MS, 600, scenario=scenario, seed=5, artifacts=False)
    assert _digest(messages) == BEFORE_ARTIFACTS[scenario]


def test_artifacts_off_is_the_default_and_byte_identical_across_sleep_and_endless() -> None:
    assert _digest(generate_ward("w2", 2, START_MS, 3600, seed=9)) == BEFORE_ARTIFACTS_NIGHT
    endless = generate_ward("w3", 1, START_MS, math.inf, scenario="bradycardia", seed=3)
    assert _digest(itertools.islice(endless, 5000)) == BEFORE_ARTIFACTS_ENDLESS


# -- artifacts=True: model level ------------------------------------------------------------------


def test_artifact_stream_is_deterministic_per_patient() -> None:
    a = list(generate_ward("w1", 3, START_MS, 900, seed=4, artifacts=True))
    assert a == list(generate_ward("w1", 3, START_MS, 900, seed=4, artifacts=True))
    assert [m.payload for m in a] != [m.payload for m in generate_ward("w1", 3, START_MS, 900, seed=5, artifacts=True)]
    alone = list(generate_ward("w1", 1, START_MS, 900, seed=4, artifacts=True))
    assert alone == [m for m in a if m.patient == "p001"]
    assert a != list(generate_ward("w1", 3, START_MS, 900, seed=4))


def test_artifact_processes_run_at_their_rates_over_a_long_run() -> None:
    """200 patient-days of the event schedules: rates, sizes and durations as documented."""
    days, leads_off = 20, 0
    counts: dict[str, int] = defaultdict(int)
    for index in range(10):
        processes = _Artifacts(seed=3, index=index, start_ms=START_MS).processes
        for name, process in processes.items():
            t, end = START_MS, START_MS + days * 24 * HOUR_MS
            while (event := process.upcoming(t)).start_ms < end:
                counts[name] += 1
                span = event.end_ms - event.start_ms
                if name == "motion":
                    assert 30 <= event.size <= 60
                    assert span // PERIODS_MS["heart_rate"] in range(2, 9)
                elif name == "spo2_slip":
                    assert all(80 <= v <= 88 for v in event.values)
                    assert span == len(event.values) * PERIODS_MS["spo2"]
                    assert len(event.values) in (1, 2)
                elif name == "probe_off":
                    leads_off += event.vital == "ecg"
                    assert 20_000 <= span <= 60_000 if event.vital == "ecg" else 40_000 <= span <= 90_000
                else:
                    assert 2 <= event.size <= 4
                    assert 10_000 <= span <= 30_000
                t = event.end_ms
    patient_hours = 10 * days * 24
    for name, rate in ARTIFACT_RATES.items():
        assert counts[name] / patient_hours == pytest.approx(rate, rel=0.15), name
    assert leads_off / counts["probe_off"] == pytest.approx(LEADS_OFF_SHARE, abs=0.12)


def test_episode_weight_ramps_holds_and_recovers() -> None:
    e = Episode(1000, 100, 200, 400, Effects(hr_target=40.0, hr_pull=1.0, hr_add=10.0))
    assert (e.hold_from_ms, e.hold_until_ms, e.end_ms) == (1100, 1300, 1700)
    assert [e.weight(t) for t in (999, 1000, 1050, 1100, 1299, 1300, 1500, 1700)] == [
        0.0,
        0.0,
        0.5,
        1.0,
        1.0,
        1.0,
        0.5,
        0.0,
    ]
    half = e.effects.scaled(0.5)
    assert (half.hr_target, half.hr_pull, half.hr_add) == (40.0, 0.5, 5.0)


def test_episodes_act_on_their_patient_only_and_unknown_patients_are_refused() -> None:
    episode = Episode(NOON_MS + 60_000, 30_000, 300_000, 30_000, Effects(rr_target=30.0, rr_pull=1.0))
    series = _decode(generate_ward("w1", 2, NOON_MS, 600, seed=1, episodes={"p002": [episode]}))
    held = [v for ts, v in series[("p002", "respiration")] if episode.hold_from_ms <= ts < episode.hold_until_ms]
    assert len(held) == 300
    assert statistics.fmean(held) == pytest.approx(30.0, abs=0.2)
    assert max(v for _, v in series[("p001", "respiration")]) < 25
    with pytest.raises(ValueError, match="p003"):
        generate_ward("w1", 2, NOON_MS, 60, episodes={"p003": [episode]})


# -- the ward day ---------------------------------------------------------------------------------

DAY_PATIENTS, DAY_HOURS, DAY_SEED = 8, 4.0, 11


@pytest.fixture(scope="module")
def day() -> tuple[Series, list[Deterioration]]:
    """03:00-07:00 UTC, 8 patients (32 patient-hours, mostly asleep), one of each kind."""
    stream, deteriorations = ward_day(
        "w1", DAY_PATIENTS, THREE_AM_MS, hours=DAY_HOURS, seed=DAY_SEED, deteriorations=DAY_PATIENTS
    )
    return _decode(stream), deteriorations


def test_ward_day_is_deterministic() -> None:
    def run(seed: int, messages: int | None = None) -> tuple[str, list[Deterioration]]:
        stream, listed = ward_day("w1", 2, NOON_MS, hours=1.25, seed=seed)
        return _digest(itertools.islice(stream, messages)), listed

    first = run(3)
    assert first == run(3)
    assert len(first[1]) == 1
    other = run(4, 5000)
    assert other[0] != run(3, 5000)[0]
    assert other[1] != first[1]


def test_ward_day_picks_about_one_patient_in_five_after_the_first_hour() -> None:
    for patients, expected in ((1, 1), (4, 1), (12, 2), (20, 4), (40, 8)):
        _, listed = ward_day("w1", patients, NOON_MS, seed=patients)
        assert len(listed) == expected
        assert len({d.patient for d in listed}) == expected
        for d in listed:
            assert NOON_MS + HOUR_MS <= d.start_ms < d.end_ms <= NOON_MS + 24 * HOUR_MS
            assert d.rules == DETERIORATION_RULES[d.kind]
            assert d.primary == d.rules[0]
    _, forty = ward_day("w1", 40, NOON_MS, seed=1)
    assert {d.kind for d in forty} == set(KINDS)  # a shuffled cycle: 8 deteriorations, 8 kinds
    assert ward_day("w1", 0, NOON_MS)[1] == []
    assert ward_day("w1", 5, NOON_MS, deteriorations=0)[1] == []


def test_ward_day_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="deteriorations"):
        ward_day("w1", 3, NOON_MS, deteriorations=4)
    with pytest.raises(ValueError, match="too short"):
        ward_day("w1", 3, NOON_MS, hours=1.0)
    with pytest.raises(ValueError, match="hours"):
        ward_day("w1", 3, NOON_MS, hours=0)
    _, short = ward_day("w1", 8, NOON_MS, hours=1.5, deteriorations=8)  # only the short kinds fit
    assert {d.kind for d in short} == {"desaturation", "bradycardia", "tachycardia", "tachypnoea"}


def test_deterioration_rules_are_the_ones_in_the_brief() -> None:
    assert DETERIORATION_RULES == {
        "desaturation": ("spo2_low",),
        "bradycardia": ("hr_extreme", "hr_low"),
        "tachycardia": ("hr_extreme_high", "hr_high"),
        "fever": ("temp_high",),
        "hypotension": ("bp_sys_low",),
        "hypoglycaemia": ("glucose_low_l2", "glucose_low"),
        "tachypnoea": ("rr_high",),
        "sepsis": ("news2_medium", "news2_high"),
    }


def _longest_run_ms(series: list[tuple[int, Any]], holds: Callable[[Any], bool], breaks: int = 0) -> int:
    """Longest time over which `holds` is true, forgiving up to `breaks` failing readings in a row."""
    best, run_from, failing = 0, None, 0
    last_ok = 0
    for ts, value in series:
        if holds(value):
            run_from = ts if run_from is None else run_from
            last_ok, failing = ts, 0
            best = max(best, last_ok - run_from)
        elif run_from is not None:
            failing += 1
            if failing > breaks:
                run_from, failing = None, 0
    return best


def _within(series: list[tuple[int, Any]], lo_ms: int, hi_ms: int) -> list[tuple[int, Any]]:
    return [(ts, v) for ts, v in series if lo_ms <= ts < hi_ms]


def _news2(spo2: float, rr: float, hr: float, sbp: float, temp: float) -> int:
    """NEWS2 scale 1, on air, alert (CLINICAL.md §1)."""
    score = 3 if rr <= 8 else 1 if rr <= 11 else 0 if rr <= 20 else 2 if rr <= 24 else 3
    score += 3 if spo2 <= 91 else 2 if spo2 <= 93 else 1 if spo2 <= 95 else 0
    score += 3 if sbp <= 90 else 2 if sbp <= 100 else 1 if sbp <= 110 else 0 if sbp < 220 else 3
    score += 3 if hr <= 40 else 1 if hr <= 50 else 0 if hr <= 90 else 1 if hr <= 110 else 2 if hr <= 130 else 3
    score += 3 if temp <= 35 else 1 if temp <= 36 else 0 if temp <= 38 else 1 if temp <= 39 else 2
    return score


def _news2_at(series: Series, patient: str, t_ms: int) -> int:
    def median5(vital: str) -> float:
        return float(statistics.median(v for _, v in _within(series[(patient, vital)], t_ms - 300_000, t_ms)))

    def latest(vital: str) -> Any:
        return [v for ts, v in series[(patient, vital)] if ts < t_ms][-1]

    return _news2(
        median5("spo2"),
        median5("respiration"),
        median5("heart_rate"),
        latest("blood_pressure")["systolic"],
        latest("temperature"),
    )


MINUTE = 60_000


def test_every_kind_shows_in_the_stream_as_listed(day: tuple[Series, list[Deterioration]]) -> None:
    series, listed = day
    assert sorted(d.kind for d in listed) == sorted(KINDS)
    for d in listed:
        p, lo, hi = d.patient, d.start_ms, d.end_ms

        def during(vital: str, p: str = p, lo: int = lo, hi: int = hi) -> list[tuple[int, Any]]:
            return _within(series[(p, vital)], lo, hi)

        def before(vital: str, p: str = p, lo: int = lo) -> list[tuple[int, Any]]:
            return _within(series[(p, vital)], lo - HOUR_MS, lo)

        if d.kind == "desaturation":
            assert _longest_run_ms(during("spo2"), lambda v: v < 90) >= 5 * MINUTE - PERIODS_MS["spo2"]
            assert min(v for _, v in during("spo2")) >= 80
            assert _longest_run_ms(before("spo2"), lambda v: v < 90) < 10_000  # a probe slip at most
        elif d.kind == "bradycardia":
            # Motion spikes (<= 8 readings) may interrupt the run; they do on real monitors.
            assert _longest_run_ms(during("heart_rate"), lambda v: v <= 40, breaks=8) >= 2 * MINUTE
            assert statistics.median(v for _, v in before("heart_rate")) > 50
        elif d.kind == "tachycardia":
            assert _longest_run_ms(during("heart_rate"), lambda v: v >= 140) >= 2 * MINUTE
            assert statistics.median(v for _, v in before("heart_rate")) < 100
        elif d.kind == "fever":
            temps = during("temperature")
            assert _longest_run_ms(temps, lambda v: v >= 39.1) >= HOUR_MS - PERIODS_MS["temperature"]
            assert 39.35 <= max(v for _, v in temps) <= 39.85
            first_high = next(ts for ts, v in temps if v >= 39.1)
            assert first_high - lo >= 40 * MINUTE  # a rise over 1-2 h, not a jump
            assert max(v for _, v in before("temperature")) < 38.0
        elif d.kind == "hypotension":
            sbp = [v["systolic"] for _, v in during("blood_pressure")]
            assert any(78 <= s <= 88 for s in sbp)
            assert min(sbp) >= 78
            assert all(v["systolic"] > 100 for _, v in before("blood_pressure"))
        elif d.kind == "hypoglycaemia":
            glucose = during("glucose")
            assert _longest_run_ms(glucose, lambda v: v < 54) >= 30 * MINUTE - PERIODS_MS["glucose"]
            assert min(v for _, v in glucose) >= 44
            assert next(ts for ts, v in glucose if v < 54) - lo <= 32 * MINUTE
            assert min(v for _, v in before("glucose")) > 70
        elif d.kind == "tachypnoea":
            assert _longest_run_ms(during("respiration"), lambda v: v >= 25) >= 5 * MINUTE - 1000
            assert 26 - 0.4 <= statistics.median(v for _, v in during("respiration")) <= 32 + 0.4
            assert max(v for _, v in before("respiration")) < 22
        else:
            assert d.kind == "sepsis"
            scores = [_news2_at(series, p, t) for t in range(lo, hi, 5 * MINUTE)]
            assert scores[0] <= 4
            assert max(scores) >= 7
            assert 5 in scores or 6 in scores  # passes the medium band on the way up
            first_medium = lo + 5 * MINUTE * next(i for i, s in enumerate(scores) if s >= 5)
            assert first_medium - lo >= 20 * MINUTE  # over 1-2 h


def _quiet_spans(d: Deterioration) -> list[tuple[int, int]]:
    """A patient's time outside its deterioration, in the day fixture."""
    end = THREE_AM_MS + round(DAY_HOURS * HOUR_MS)
    return [(lo, hi) for lo, hi in ((THREE_AM_MS, d.start_ms), (d.end_ms, end)) if hi > lo]


def test_normal_physiology_stays_inside_the_default_limits(day: tuple[Series, list[Deterioration]]) -> None:
    """Outside its deterioration a patient is normal: one-minute medians (what persistence
    delays see through motion spikes and probe slips) and every slow reading are in range."""
    series, listed = day
    for d in listed:
        p = d.patient
        for lo, hi in _quiet_spans(d):
            for vital, low, high in (("heart_rate", 47, 110), ("spo2", 90, 100), ("respiration", 9, 21)):
                values = _within(series[(p, vital)], lo, hi)
                for t in range(lo, hi, MINUTE):
                    window = [v for ts, v in values if t <= ts < t + MINUTE]
                    if window:
                        assert low <= statistics.median(window) <= high, (p, vital, t)
            for ts, v in _within(series[(p, "temperature")], lo, hi):
                assert 35.1 <= v <= 38.0, (p, ts, v)
            for ts, v in _within(series[(p, "glucose")], lo, hi):
                assert 70 <= v <= 180, (p, ts, v)
            bps = _within(series[(p, "blood_pressure")], lo, hi)
            for ts, v in bps:
                assert 90 < v["systolic"] <= 160 and 45 <= v["diastolic"] <= 90, (p, ts, v)
            for (_, a), (_, b) in itertools.pairwise(bps):
                assert b["systolic"] > 0.8 * a["systolic"]  # bp_sys_falling: -20 %


def _runs(flags: list[bool]) -> list[int]:
    """Lengths of the runs of True."""
    return [len(list(g)) for k, g in itertools.groupby(flags) if k]


def _sleep_dips(spo2: list[tuple[int, Any]], sleep: list[tuple[int, Any]]) -> int:
    """SpO2 dips while asleep: two readings in a row >= 1.5 points (or one >= 2.5) under the
    median of the 30 s before, probe slips (<= 88 %) left out; 40 s apart at least."""
    count, last, below = 0, -HOUR_MS, 0
    states = iter(sleep)
    state, upcoming = "awake", next(states, None)
    for i in range(6, len(spo2)):
        ts, v = spo2[i]
        while upcoming is not None and upcoming[0] <= ts:
            state, upcoming = upcoming[1], next(states, None)
        drop = statistics.median(x for _, x in spo2[i - 6 : i]) - v
        below = below + 1 if drop >= 1.5 and v > 88.0 else 0
        if state == "asleep" and (below >= 2 or (drop >= 2.5 and v > 88.0)):
            if ts - last > 40_000:
                count += 1
            last = ts
    return count


def test_artifacts_in_the_stream_at_their_rates(day: tuple[Series, list[Deterioration]]) -> None:
    series, listed = day
    hours = DAY_PATIENTS * DAY_HOURS
    motion, slips, spo2_off, leads_off, dips, asleep_h = 0, 0, [], [], 0, 0.0
    for p in (f"p{i:03d}" for i in range(1, DAY_PATIENTS + 1)):
        # Motion: runs of heart-rate readings >= 20 bpm over the reading before the run.
        hr = [v for _, v in series[(p, "heart_rate")]]
        ref, run = hr[0], 0
        lengths = []
        for v in hr[1:]:
            if v - ref >= 20:
                run += 1
            else:
                if run:
                    lengths.append(run)
                ref, run = v, 0
        assert all(2 <= n <= 8 for n in lengths), lengths
        motion += len(lengths)

        spo2 = series[(p, "spo2")]
        values = [v for _, v in spo2]
        # Probe slips: a reading <= 88 % straight after one >= 4 points higher; 1-2 readings.
        slipped = [b <= 88.0 and a - b >= 4 for a, b in itertools.pairwise(values)]
        slips += sum(slipped)
        # Probe off: a hole in the 5-s SpO2 series, 8-18 readings (40-90 s) long.
        spo2_off += [(b - a) // PERIODS_MS["spo2"] - 1 for (a, _), (b, _) in itertools.pairwise(spo2) if b - a > 5000]
        # Leads off: flat ECG chunks, 20-60 in a row.
        leads_off += _runs([flat for _, flat in series[(p, "ecg")]])
        # Sleep dips, away from the deterioration (a falling SpO2 would look like one).
        d = next(x for x in listed if x.patient == p)
        sleep = series[(p, "sleep")]
        for lo, hi in _quiet_spans(d):
            lo, hi = (lo, hi - 10 * MINUTE) if lo == THREE_AM_MS else (lo + 10 * MINUTE, hi)
            dips += _sleep_dips(_within(spo2, lo, hi), sleep)
            asleep = [v == "asleep" for _, v in _within(sleep, lo, hi)]
            asleep_h += sum(asleep) * PERIODS_MS["sleep"] / HOUR_MS

    assert 2.0 <= motion / hours <= 4.5  # "a few" a patient-hour (3)
    assert 0.5 <= slips / hours <= 1.6  # about 1 a patient-hour
    assert all(8 <= n <= 18 for n in spo2_off), spo2_off
    assert all(20 <= n <= 60 for n in leads_off), leads_off
    assert 1 <= len(spo2_off) + len(leads_off) <= 12  # about 2 a patient-day: 2.7 expected here
    assert asleep_h > 8
    assert 0.2 <= dips / asleep_h <= 1.0  # a few a night (0.5 an hour asleep)

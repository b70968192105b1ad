"""Event-time scenarios, one per rule of the default set: a stream of readings for one patient and
what must (and must not) come of it. Shared by the core tests and the end-to-end MQTT test."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from monitorme.core.model import RawMessage

S = 1000
MIN = 60 * S
NORMAL: dict[str, Any] = {
    "heart_rate": 75.0, "respiration": 16.0, "spo2": 97.0, "temperature": 37.0, "glucose": 110.0,
    "blood_pressure": {"systolic": 122, "diastolic": 78},
}
PERIOD_MS = {"heart_rate": 500, "respiration": 1000, "spo2": 5000, "glucose": 120_000, "temperature": 300_000,
             "blood_pressure": 3_600_000, "ecg": 1000, "sleep": 120_000}


@dataclass
class Scenario:
    """Readings ``(offset_ms, vital, value)`` and the alerts they must raise (``rule -> window``)."""

    name: str
    readings: list[tuple[int, str, Any]] = field(default_factory=list)
    expect: dict[str, tuple[int, int]] = field(default_factory=dict)  # rule -> raise between offsets (ms)
    forbid: set[str] = field(default_factory=set)  # rules that must not raise
    alerts_of: dict[str, int] = field(default_factory=dict)  # rule -> exactly this many alerts
    asleep: bool = False
    thresholds: dict[str, Any] = field(default_factory=dict)

    def series(self, vital: str, start: int, end: int, value: Any | None = None, step: int | None = None) -> None:
        step = step or PERIOD_MS[vital]
        for t in range(start, end, step):
            self.readings.append((t, vital, NORMAL[vital] if value is None else value))

    def messages(self, ward: str, patient: str, base_ms: int) -> list[RawMessage]:
        readings = list(self.readings)
        if self.asleep:
            end = max(t for t, _, _ in readings) if readings else 0
            readings += [(t, "sleep", "asleep") for t in range(-2 * MIN, end + 1, 2 * MIN)]
        readings.sort(key=lambda r: r[0])
        out = []
        for t, vital, value in readings:
            doc = {"ts": base_ms + t, "value": value}
            out.append(RawMessage(f"monitorme/{ward}/{patient}/{vital}", orjson.dumps(doc), base_ms + t))
        return out


def ecg_chunk(beats_at_ms: list[int], start: int, hz: int = 250, noise: float = 0.0,
              flat: bool = False) -> dict[str, Any]:
    """One second of ECG: an R wave (1.2 mV Gaussian) at each beat time; optional small noise."""
    if flat:
        return {"hz": hz, "samples": [0.0] * hz}
    samples = []
    for i in range(hz):
        t = start + i * 1000 / hz
        v = sum(1.2 * math.exp(-(((t - b) / 12) ** 2)) for b in beats_at_ms if abs(t - b) < 60)
        v += noise * math.sin(i * 1.7) + 0.05 * math.sin(2 * math.pi * t / 4000)
        samples.append(round(v, 3))
    return {"hz": hz, "samples": samples}


def ecg_series(sc: Scenario, start: int, end: int, rr_ms: int = 800, gap: tuple[int, int] | None = None,
               flat_from: int | None = None) -> None:
    """ECG chunks every second with beats every ``rr_ms``; no beats inside ``gap``; flat from ``flat_from``."""
    beats = [b for b in range(start + 300, end + 1000, rr_ms) if not (gap and gap[0] <= b < gap[1])]
    for t in range(start, end, 1000):
        if flat_from is not None and t >= flat_from:
            sc.readings.append((t, "ecg", ecg_chunk([], t, flat=True)))
        else:
            sc.readings.append((t, "ecg", ecg_chunk([b for b in beats if t - 100 <= b < t + 1100], t, noise=0.02)))


def threshold(name: str, vital: str, breach: Any, *, period: int | None = None, before: int = MIN,
              breach_for: int, delay_ms: int, after: int = 3 * MIN, asleep: bool = False,
              expect: bool = True, normal: Any | None = None) -> Scenario:
    """Normal, then ``breach`` for ``breach_for`` ms, then normal: raised ``delay_ms`` into the breach."""
    sc = Scenario(name, asleep=asleep)
    step = period or PERIOD_MS[vital]
    sc.series(vital, 0, before, normal, step)
    sc.series(vital, before, before + breach_for, breach, step)
    sc.series(vital, before + breach_for, before + breach_for + after, normal, step)
    if expect:
        sc.expect[name] = (before + delay_ms, before + delay_ms)  # readings fall on exact times
    else:
        sc.forbid.add(name)
    return sc


def bp(s: float, d: float = 78) -> dict[str, float]:
    return {"systolic": s, "diastolic": d}


def all_scenarios() -> Iterator[Scenario]:
    """At least one scenario per rule of the default set, both sides of every asleep variant."""
    yield threshold("spo2_desat", "spo2", 78.0, breach_for=MIN, delay_ms=0)
    yield threshold("spo2_low", "spo2", 87.0, breach_for=2 * MIN, delay_ms=10 * S)  # 3 readings at 5 s
    awake = threshold("spo2_low", "spo2", 89.0, breach_for=2 * MIN, delay_ms=10 * S)
    awake.name = "spo2_low_awake_89"
    yield awake
    asleep = threshold("spo2_low", "spo2", 89.0, breach_for=2 * MIN, delay_ms=0, asleep=True, expect=False)
    asleep.name = "spo2_low_asleep_89"
    yield asleep
    sc = Scenario("spo2_falling")
    sc.series("spo2", 0, 12 * MIN, 97.0)
    sc.series("spo2", 12 * MIN, 15 * MIN, 93.0)
    sc.expect["spo2_falling"] = (12 * MIN + 55 * S, 12 * MIN + 65 * S)
    sc.forbid.add("spo2_low")
    yield sc
    yield threshold("hr_extreme", "heart_rate", 35.0, breach_for=MIN, delay_ms=10 * S - 500)
    yield threshold("hr_extreme_high", "heart_rate", 150.0, breach_for=MIN, delay_ms=10 * S - 500)
    hr_low = threshold("hr_low", "heart_rate", 47.0, breach_for=MIN, delay_ms=30 * S - 500)
    hr_low.name = "hr_low_awake_47"
    yield hr_low
    hr_low_asleep = threshold("hr_low", "heart_rate", 47.0, breach_for=MIN, delay_ms=0, asleep=True, expect=False)
    hr_low_asleep.name = "hr_low_asleep_47"
    yield hr_low_asleep
    hr_high = threshold("hr_high", "heart_rate", 115.0, breach_for=MIN, delay_ms=0, expect=False)
    hr_high.name = "hr_high_awake_115"
    yield hr_high
    hr_high_asleep = threshold("hr_high", "heart_rate", 115.0, breach_for=MIN, delay_ms=30 * S - 500, asleep=True)
    hr_high_asleep.name = "hr_high_asleep_115"
    yield hr_high_asleep
    sc = Scenario("hr_rising")
    sc.series("heart_rate", 0, 30 * MIN, 70.0, step=2000)
    sc.series("heart_rate", 30 * MIN, 37 * MIN, 88.0, step=2000)
    sc.expect["hr_rising"] = (35 * MIN - 4 * S, 35 * MIN + 4 * S)
    yield sc
    yield threshold("rr_low", "respiration", 7.0, breach_for=MIN, delay_ms=29 * S)
    yield threshold("rr_apnea", "respiration", 0.0, breach_for=MIN, delay_ms=19 * S)
    yield threshold("rr_high", "respiration", 27.0, breach_for=2 * MIN, delay_ms=59 * S)
    # held counts the pipeline period (1 s): 299 s after the first breach, rounded up to the 2-s readings
    yield threshold("rr_elevated", "respiration", 22.0, breach_for=6 * MIN, delay_ms=300 * S, period=2000)
    hour = 3_600_000
    low = threshold("bp_sys_low", "blood_pressure", bp(88), before=hour, breach_for=hour, delay_ms=0, after=hour)
    yield low
    severe = threshold("bp_sys_low", "blood_pressure", bp(78, 50), before=hour, breach_for=hour, delay_ms=0,
                       after=hour)
    severe.name = "bp_sys_low_severe"
    yield severe
    adv = threshold("bp_sys_advisory", "blood_pressure", bp(96), before=hour, breach_for=hour, delay_ms=0,
                    after=hour)
    yield adv
    adv_asleep = threshold("bp_sys_advisory", "blood_pressure", bp(96), before=hour, breach_for=hour, delay_ms=0,
                           after=hour, asleep=True, expect=False)
    adv_asleep.name = "bp_sys_advisory_asleep"
    yield adv_asleep
    yield threshold("bp_sys_high", "blood_pressure", bp(170), before=hour, breach_for=hour, delay_ms=0, after=hour)
    yield threshold("bp_dia_low", "blood_pressure", bp(120, 47), before=hour, breach_for=hour, delay_ms=0, after=hour)
    dia_asleep = threshold("bp_dia_low", "blood_pressure", bp(120, 47), before=hour, breach_for=hour, delay_ms=0,
                           after=hour, asleep=True, expect=False)
    dia_asleep.name = "bp_dia_low_asleep"
    yield dia_asleep
    yield threshold("bp_dia_high", "blood_pressure", bp(150, 95), before=hour, breach_for=hour, delay_ms=0,
                    after=hour)
    for name, asleep, expected in (("bp_sys_falling", False, True), ("bp_sys_falling_asleep", True, False)):
        sc = Scenario(name, asleep=asleep)
        for i, s in enumerate([130, 130, 130, 100]):
            sc.readings.append((i * hour, "blood_pressure", bp(s, 75)))
        if expected:
            sc.expect["bp_sys_falling"] = (3 * hour - 1, 3 * hour + 1)
        else:
            sc.forbid.add("bp_sys_falling")
        yield sc
    five = 300_000
    yield threshold("temp_low", "temperature", 34.8, before=2 * five, breach_for=4 * five, delay_ms=five,
                    after=2 * five)
    yield threshold("temp_high", "temperature", 39.4, before=2 * five, breach_for=4 * five, delay_ms=five,
                    after=2 * five)
    yield threshold("temp_elevated", "temperature", 38.5, before=2 * five, breach_for=4 * five, delay_ms=five,
                    after=2 * five)
    sc = Scenario("temp_rising")
    for i in range(12):
        sc.readings.append((i * five, "temperature", 36.8))
    for i in range(12, 16):
        sc.readings.append((i * five, "temperature", 37.9))
    sc.expect["temp_rising"] = (13 * five - 1, 13 * five + 1)
    yield sc
    two = 120_000
    yield threshold("glucose_low_l2", "glucose", 50.0, before=4 * two, breach_for=3 * two, delay_ms=0, after=4 * two)
    yield threshold("glucose_low", "glucose", 65.0, before=4 * two, breach_for=3 * two, delay_ms=0, after=4 * two)
    yield threshold("glucose_high", "glucose", 200.0, before=4 * two, breach_for=3 * two, delay_ms=two,
                    after=4 * two)
    yield threshold("glucose_critical_high", "glucose", 420.0, before=4 * two, breach_for=2 * two, delay_ms=0,
                    after=4 * two)
    sc = Scenario("glucose_falling")
    for i in range(30):
        sc.readings.append((i * two, "glucose", 150.0))
    for i in range(30, 50):
        sc.readings.append((i * two, "glucose", 150.0 - 3 * 2 * (i - 29)))
    sc.expect["glucose_falling"] = (30 * two + 15 * MIN, 30 * two + 24 * MIN)
    yield sc
    sc = Scenario("ecg_asystole")
    ecg_series(sc, 0, 40 * S, gap=(20 * S, 40 * S))
    sc.expect["ecg_asystole"] = (23 * S, 26 * S)
    yield sc
    sc = Scenario("ecg_pause")
    ecg_series(sc, 0, 40 * S, gap=(20 * S, 23_500))
    sc.expect["ecg_pause"] = (22 * S, 26 * S)
    sc.forbid.add("ecg_asystole")
    yield sc
    sc = Scenario("sensor_fault_ecg")
    ecg_series(sc, 0, 60 * S, flat_from=20 * S)
    sc.expect["sensor_fault_ecg"] = (28 * S, 31 * S)
    sc.forbid.add("ecg_asystole")
    yield sc
    yield from news2_scenarios()
    yield normal_patient()
    yield hovering()


def hovering() -> Scenario:
    """SpO2 in and out of alarm around 90 % but inside the 2-point hysteresis band: one alert, not five."""
    sc = Scenario("hysteresis_spo2")
    t = 0
    sc.series("spo2", 0, MIN, 97.0)
    t = MIN
    for _ in range(5):
        sc.series("spo2", t, t + 20 * S, 87.0)
        sc.series("spo2", t + 20 * S, t + 40 * S, 91.0)
        t += 40 * S
    sc.series("spo2", t, t + MIN, 96.0)
    sc.expect["spo2_low"] = (MIN + 10 * S, MIN + 10 * S)  # third reading under 90: 15 s held
    sc.alerts_of["spo2_low"] = 1
    return sc


def normal_patient() -> Scenario:
    """Ten simulated minutes of one normal patient, all eight vitals: nothing clinical may fire."""
    from monitorme.config import load_pipelines, load_rules
    from monitorme.sim.model import generate_ward

    sc = Scenario("normal_patient")
    for m in generate_ward("x", 1, 0, 600.0, seed=4):
        sc.readings.append((m.ts_ms, m.vital, orjson.loads(m.payload)["value"]))
    sc.forbid = {r.name for r in load_rules(load_pipelines()).rules if not r.silence_s}
    return sc


def _news2(name: str, hr: float, rr: float, spo2: float, sbp: float, temp: float, expect: str | None,
           forbid: set[str]) -> Scenario:
    sc = Scenario(name)
    sc.series("heart_rate", 0, 12 * MIN, hr, step=2000)
    sc.series("respiration", 0, 12 * MIN, rr, step=2000)
    sc.series("spo2", 0, 12 * MIN, spo2)
    sc.series("temperature", 0, 12 * MIN, temp)
    sc.readings.append((0, "blood_pressure", bp(sbp)))
    if expect:
        sc.expect[expect] = (0, 6 * MIN)
    sc.forbid |= forbid
    return sc


def news2_scenarios() -> Iterator[Scenario]:
    # RR 26 -> 3, SpO2 91 -> 3, pulse 115 -> 2: 8 = high (and a single 3)
    yield _news2("news2_high", 115, 26, 91, 120, 37.0, "news2_high", {"news2_medium"})
    # RR 22 -> 2, SpO2 95 -> 1, pulse 95 -> 1, temp 38.4 -> 1: 5 = medium
    yield _news2("news2_medium", 95, 22, 95, 120, 38.4, "news2_medium", {"news2_high", "news2_single_3"})
    # SBP 88 -> 3 alone: a single parameter of 3
    yield _news2("news2_single_3", 75, 16, 97, 88, 37.0, "news2_single_3", {"news2_high", "news2_medium"})
    low = _news2("news2_low", 75, 16, 95, 120, 37.0, "news2_low", {"news2_high", "news2_medium"})
    low.thresholds = {"news2_low": {"enabled": True}}  # off by default; a ward can switch it on
    yield low
    normal = _news2("news2_normal", 75, 16, 97, 120, 37.0, None,
                    {"news2_high", "news2_medium", "news2_single_3", "news2_low"})
    yield normal

"""Generate a simulated ward's device readings, in event time, as MQTT-ready messages."""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "ECG_HZ",
    "PERIODS_MS",
    "SCENARIOS",
    "SCENARIO_CYCLE_S",
    "VITALS",
    "SimMessage",
    "expected_counts",
    "generate_ward",
    "is_asleep",
    "patient_ids",
]

SCENARIOS: Final = (
    "normal",
    "desaturation",
    "fever",
    "bradycardia",
    "dropout",
    "malformed",
    "deterioration",
)

# Device periods from CONTRACT.md §2.
PERIODS_MS: Final[dict[str, int]] = {
    "heart_rate": 500,
    "blood_pressure": 3_600_000,
    "spo2": 5_000,
    "glucose": 120_000,
    "respiration": 1_000,
    "ecg": 1_000,
    "temperature": 300_000,
    "sleep": 120_000,
}
VITALS: Final = tuple(PERIODS_MS)

ECG_HZ: Final = 250
# An endless run has no "fraction of the run", so scenarios repeat on this cycle instead.
SCENARIO_CYCLE_S: Final = 600.0
# Every device's first reading lands within this much of the start, so short runs see all vitals.
FIRST_READING_WITHIN_MS: Final = 2_000

_DAY_MS: Final = 86_400_000
_HOUR_MS: Final = 3_600_000
_SLEEP_FROM_MS: Final = 23 * _HOUR_MS
_SLEEP_UNTIL_MS: Final = 7 * _HOUR_MS

# (amplitude mV, centre s from R, width s, stretches with RR) for the PQRST sum of Gaussians.
# P and T stretch with sqrt(RR) (roughly Bazett); the QRS keeps its width at any rate.
_ECG_WAVES: Final = (
    (0.15, -0.20, 0.025, True),
    (-0.10, -0.035, 0.010, False),
    (1.20, 0.0, 0.012, False),
    (-0.25, 0.035, 0.010, False),
    (0.30, 0.28, 0.050, True),
)
_ECG_AMP = np.array([w[0] for w in _ECG_WAVES])[:, None, None]
_ECG_CENTRE = np.array([w[1] for w in _ECG_WAVES])[:, None, None]
_ECG_WIDTH = np.array([w[2] for w in _ECG_WAVES])[:, None, None]
_ECG_STRETCH = np.array([w[3] for w in _ECG_WAVES])[:, None, None]
# Neighbouring beats (k = -1, 0, +1) so a wave near the wrap point is never cut off at high rates.
_ECG_NEIGHBOURS = np.array([-1.0, 0.0, 1.0])[None, :, None]
_ECG_STEPS = np.arange(ECG_HZ, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One message to publish: topic, raw payload and the event time it belongs to.

    Malformed messages carry the daemon's expected rejection slug in `malformed_reason`
    and an empty `vital`, so counting by (patient, vital) never mistakes them for readings.
    """

    topic: str
    payload: bytes
    ts_ms: int
    patient: str
    vital: str
    malformed_reason: str | None = None


def patient_ids(patients: int) -> list[str]:
    """Return the simulated patient ids `p001`, `p002`, ... for a ward of `patients`.

    >>> patient_ids(3)
    ['p001', 'p002', 'p003']
    """
    return [f"p{i + 1:03d}" for i in range(patients)]


def is_asleep(ts_ms: int, offset_ms: int = 0) -> bool:
    """Tell whether a patient sleeps at `ts_ms`: 23:00-07:00 UTC shifted by `offset_ms`.

    >>> is_asleep(2 * 3_600_000), is_asleep(12 * 3_600_000)
    (True, False)
    """
    tod = (ts_ms - offset_ms) % _DAY_MS
    return tod >= _SLEEP_FROM_MS or tod < _SLEEP_UNTIL_MS


class _Walk:
    """Ornstein-Uhlenbeck deviation from a baseline: a mean-reverting random walk.

    Advanced lazily to each event time with the exact OU transition, so the walk's
    statistics do not depend on how often a vital is sampled.
    """

    __slots__ = ("_last_ms", "_sigma", "_tau_ms", "_x")

    def __init__(self, rng: np.random.Generator, sigma: float, tau_s: float, t0_ms: int) -> None:
        self._sigma = sigma
        self._tau_ms = tau_s * 1000.0
        self._x = sigma * float(rng.standard_normal())
        self._last_ms = t0_ms

    def at(self, t_ms: int, rng: np.random.Generator) -> float:
        dt = t_ms - self._last_ms
        if dt > 0:
            decay = math.exp(-dt / self._tau_ms)
            spread = self._sigma * math.sqrt(1.0 - decay * decay)
            self._x = self._x * decay + spread * float(rng.standard_normal())
            self._last_ms = t_ms
        return self._x


@dataclass(frozen=True, slots=True)
class _Effects:
    """Scenario changes to one patient at one instant (additive, then a pull to a target)."""

    hr_add: float = 0.0
    hr_target: float = 0.0
    hr_pull: float = 0.0
    spo2_add: float = 0.0
    spo2_target: float = 0.0
    spo2_pull: float = 0.0
    rr_add: float = 0.0
    temp_add: float = 0.0
    temp_target: float = 0.0
    temp_pull: float = 0.0
    sbp_add: float = 0.0
    dbp_add: float = 0.0
    silent: frozenset[str] = frozenset()


_NO_EFFECTS: Final = _Effects()


def _ramp(f: float, start: float, end: float) -> float:
    """0 before `start`, 1 after `end`, linear in between."""
    if f <= start:
        return 0.0
    if f >= end:
        return 1.0
    return (f - start) / (end - start)


def _episode(f: float, start: float, end: float, edge: float) -> float:
    """0 -> 1 over [start, start+edge], held, then 1 -> 0 over [end, end+edge]."""
    return _ramp(f, start, start + edge) - _ramp(f, end, end + edge)


def _effects(scenario: str, f: float) -> _Effects:
    """What `scenario` does to patient p001 at run fraction `f` (0..1)."""
    if scenario == "desaturation":
        e = _episode(f, 0.20, 0.50, 0.05)
        return _Effects(spo2_target=84.0, spo2_pull=e, rr_add=5.0 * e, hr_add=8.0 * e)
    if scenario == "fever":
        return _Effects(temp_target=39.5, temp_pull=f, hr_add=15.0 * f, rr_add=2.0 * f)
    if scenario == "bradycardia":
        return _Effects(hr_target=38.0, hr_pull=_episode(f, 0.30, 0.60, 0.02))
    if scenario == "dropout":
        if 0.30 <= f < 0.60:
            return _Effects(silent=frozenset({"spo2", "heart_rate"}))
        return _NO_EFFECTS
    if scenario == "deterioration":
        # Ends near SpO2 -10, RR +14, HR +45, SBP -45: NEWS2 climbs from about 0 to 8 or more.
        e = _ramp(f, 0.10, 0.90)
        return _Effects(
            spo2_add=-10.0 * e,
            rr_add=14.0 * e,
            hr_add=45.0 * e,
            sbp_add=-45.0 * e,
            dbp_add=-15.0 * e,
            temp_add=1.2 * e,
        )
    return _NO_EFFECTS


class _Patient:
    """One simulated patient: baselines, random walks, ECG phase and per-device counters."""

    def __init__(
        self,
        ward: str,
        index: int,
        start_ms: int,
        end_ms: float,
        duration_ms: float,
        scenario: str,
        seed: int,
    ) -> None:
        # One generator per patient: a patient's stream depends only on (seed, index), not on
        # how many other patients share the ward.
        rng = np.random.default_rng([seed, index])
        self._rng = rng
        self.pid = f"p{index + 1:03d}"
        self._start_ms = start_ms
        self._end_ms = end_ms
        self._duration_ms = duration_ms
        self._scenario = scenario if index == 0 else "normal"
        self._topics = {v: f"monitorme/{ward}/{self.pid}/{v}" for v in VITALS}
        self._devices = {v: f"{self.pid}-{v}" for v in VITALS}
        self._seq = dict.fromkeys(VITALS, 0)

        self.hr0 = float(rng.uniform(60.0, 90.0))
        self.sbp0 = float(rng.uniform(110.0, 140.0))
        self.dbp0 = float(rng.uniform(65.0, 85.0))
        self.spo2_0 = float(rng.uniform(95.0, 99.0))
        self.rr0 = float(rng.uniform(12.0, 18.0))
        self.temp0 = float(rng.uniform(36.4, 37.2))
        self.glu0 = float(rng.uniform(100.0, 140.0))  # normal: never near the 70 mg/dL hypo limit
        self.sleep_offset_ms = int(rng.integers(-_HOUR_MS, _HOUR_MS + 1))
        self._ecg_gain = float(rng.uniform(0.85, 1.15))

        self._hr = _Walk(rng, 4.0, 600.0, start_ms)
        self._sbp = _Walk(rng, 6.0, 1800.0, start_ms)
        self._dbp = _Walk(rng, 4.0, 1800.0, start_ms)
        self._spo2 = _Walk(rng, 0.6, 300.0, start_ms)
        self._rr = _Walk(rng, 1.2, 300.0, start_ms)
        self._temp = _Walk(rng, 0.15, 3600.0, start_ms)
        self._glu = _Walk(rng, 10.0, 3600.0, start_ms)

        self._beat_phase = float(rng.uniform(0.0, 1.0))
        self._breath_phase = float(rng.uniform(0.0, 1.0))

        self._next: list[tuple[int, int]] = []
        for k, vital in enumerate(VITALS):
            first = start_ms + int(rng.integers(0, min(PERIODS_MS[vital], FIRST_READING_WITHIN_MS)))
            self._next.append((first, k))
        heapq.heapify(self._next)

    # -- physiology -------------------------------------------------------------------

    def _fraction(self, t_ms: int) -> float:
        elapsed = t_ms - self._start_ms
        if math.isinf(self._duration_ms):
            cycle = SCENARIO_CYCLE_S * 1000.0
            return (elapsed % cycle) / cycle
        return elapsed / self._duration_ms

    def _state(self, t_ms: int) -> tuple[bool, _Effects]:
        asleep = is_asleep(t_ms, self.sleep_offset_ms)
        if self._scenario == "normal":
            return asleep, _NO_EFFECTS
        return asleep, _effects(self._scenario, self._fraction(t_ms))

    def _true_hr(self, t_ms: int, asleep: bool, fx: _Effects) -> float:
        hr = self.hr0 + self._hr.at(t_ms, self._rng)
        if asleep:
            hr *= 0.90  # CLINICAL.md §3: a normal dipper's HR falls ~10 % asleep
        hr += fx.hr_add
        hr += (fx.hr_target - hr) * fx.hr_pull
        return min(max(hr, 25.0), 220.0)

    def _true_rr(self, t_ms: int, fx: _Effects) -> float:
        # CLINICAL.md §3: breathing rate does not change with sleep.
        rr = self.rr0 + self._rr.at(t_ms, self._rng) + fx.rr_add
        return min(max(rr, 4.0), 60.0)

    def _noise(self, sigma: float) -> float:
        return sigma * float(self._rng.standard_normal())

    def _value(self, vital: str, t_ms: int, asleep: bool, fx: _Effects) -> object:
        if vital == "heart_rate":
            return round(self._true_hr(t_ms, asleep, fx) + self._noise(1.5))
        if vital == "respiration":
            return round(min(max(self._true_rr(t_ms, fx) + self._noise(0.6), 0.0), 80.0), 1)
        if vital == "spo2":
            spo2 = self.spo2_0 + self._spo2.at(t_ms, self._rng) - (1.0 if asleep else 0.0)
            spo2 += fx.spo2_add
            spo2 += (fx.spo2_target - spo2) * fx.spo2_pull
            return round(min(max(spo2 + self._noise(0.4), 50.0), 100.0), 1)
        if vital == "temperature":
            temp = self.temp0 + self._temp.at(t_ms, self._rng) - (0.3 if asleep else 0.0)
            temp += fx.temp_add
            temp += (fx.temp_target - temp) * fx.temp_pull + self._noise(0.03)
            return round(min(max(temp, 33.0), 42.0), 2)
        if vital == "glucose":
            glu = self.glu0 + self._glu.at(t_ms, self._rng) + self._noise(2.0)
            return round(min(max(glu, 20.0), 600.0), 1)
        if vital == "blood_pressure":
            return self._blood_pressure(t_ms, asleep, fx)
        if vital == "sleep":
            return "asleep" if asleep else "awake"
        return self._ecg(t_ms, asleep, fx)

    def _blood_pressure(self, t_ms: int, asleep: bool, fx: _Effects) -> dict[str, int]:
        sbp = self.sbp0 + self._sbp.at(t_ms, self._rng)
        dbp = self.dbp0 + self._dbp.at(t_ms, self._rng)
        if asleep:
            # CLINICAL.md §3: night/day ratio ~0.87 systolic, ~0.83 diastolic.
            sbp *= 0.88
            dbp *= 0.85
        sbp = min(max(sbp + fx.sbp_add + self._noise(3.0), 50.0), 250.0)
        dbp = min(max(dbp + fx.dbp_add + self._noise(2.0), 30.0), sbp - 15.0)
        s, d = round(sbp), round(dbp)
        return {"systolic": s, "diastolic": d, "mean": round((s + 2 * d) / 3)}

    def _ecg(self, t_ms: int, asleep: bool, fx: _Effects) -> dict[str, object]:
        hr = self._true_hr(t_ms, asleep, fx)
        rr_s = 60.0 / hr
        # Continuous phase accumulators: beats (and breathing, for baseline wander) carry
        # across chunk boundaries and R-R intervals follow the current heart rate.
        beats = self._beat_phase + (hr / 60.0 / ECG_HZ) * _ECG_STEPS
        self._beat_phase = (self._beat_phase + hr / 60.0) % 1.0
        breath_hz = self._true_rr(t_ms, fx) / 60.0
        breaths = self._breath_phase + (breath_hz / ECG_HZ) * _ECG_STEPS
        self._breath_phase = (self._breath_phase + breath_hz) % 1.0

        # Signed distance from the nearest R peak in beats (R sits at whole beats), in seconds.
        d = ((beats + 0.5) % 1.0) - 0.5
        tau = (d[None, None, :] + _ECG_NEIGHBOURS) * rr_s
        scale = np.where(_ECG_STRETCH, math.sqrt(rr_s), 1.0)
        z = (tau - _ECG_CENTRE * scale) / (_ECG_WIDTH * scale)
        wave: npt.NDArray[np.float64] = (_ECG_AMP * np.exp(-0.5 * z * z)).sum(axis=(0, 1))
        wave *= self._ecg_gain
        wave += 0.08 * np.sin(2.0 * math.pi * breaths)
        wave += 0.01 * self._rng.standard_normal(ECG_HZ)
        return {"hz": ECG_HZ, "samples": np.round(wave, 3).tolist()}

    # -- stream -----------------------------------------------------------------------

    def stream(self) -> Iterator[SimMessage]:
        """Yield this patient's messages in event-time order until the run ends."""
        nxt = self._next
        while nxt and nxt[0][0] < self._end_ms:
            ts, k = nxt[0]
            vital = VITALS[k]
            heapq.heapreplace(nxt, (ts + PERIODS_MS[vital], k))
            asleep, fx = self._state(ts)
            if vital in fx.silent:
                continue
            value = self._value(vital, ts, asleep, fx)
            self._seq[vital] += 1
            payload = orjson.dumps({"ts": ts, "value": value, "seq": self._seq[vital], "device": self._devices[vital]})
            yield SimMessage(self._topics[vital], payload, ts, self.pid, vital)


def _ts_key(message: SimMessage) -> int:
    return message.ts_ms


def generate_ward(
    ward: str,
    patients: int,
    start_ms: int,
    duration_s: float,
    *,
    scenario: str = "normal",
    seed: int = 0,
) -> Iterator[SimMessage]:
    """Yield a ward's simulated readings in event-time order, lazily.

    Args:
        ward: ward id used in every topic.
        patients: number of patients, named `p001`, `p002`, ...
        start_ms: event time of the run's start, epoch ms.
        duration_s: event-time length of the run; `math.inf` streams forever (scenarios
            then repeat every `SCENARIO_CYCLE_S` seconds).
        scenario: one of `SCENARIOS`; scenarios act on patient `p001`.
        seed: same seed, same messages, byte for byte.

    Returns:
        An iterator of `SimMessage` sorted by `ts_ms`.

    Raises:
        ValueError: unknown scenario, negative patient count or duration.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    if not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    duration_ms = duration_s * 1000.0
    end_ms = start_ms + duration_ms
    streams = [_Patient(ward, i, start_ms, end_ms, duration_ms, scenario, seed).stream() for i in range(patients)]
    merged = heapq.merge(*streams, key=_ts_key)
    if scenario != "malformed":
        return merged
    # Imported here: malformed.py needs SimMessage from this module.
    from monitorme.sim.malformed import interleave_malformed

    return interleave_malformed(merged, ward, patients=patients, seed=seed)


def expected_counts(messages: Iterable[SimMessage]) -> dict[tuple[str, str], int]:
    """Count the valid readings per (patient, vital), leaving malformed messages out.

    >>> expected_counts([SimMessage("t", b"{}", 1, "p001", "spo2")])
    {('p001', 'spo2'): 1}
    """
    counts: Counter[tuple[str, str]] = Counter((m.patient, m.vital) for m in messages if m.malformed_reason is None)
    return dict(counts)

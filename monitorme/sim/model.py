"""Generate a simulated ward's device readings, in event time, as MQTT-ready messages.

Each patient has baselines, random walks and a sleep window. On top of that come the p001
scenarios, per-patient scripted episodes (`Episode`, used by `monitorme.sim.wardday`) and,
with `artifacts=True`, what real monitors see: motion spikes, probe slips, probes or leads
off, and brief SpO2 dips in sleep.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "ARTIFACT_RATES",
    "ECG_HZ",
    "LEADS_OFF_SHARE",
    "PERIODS_MS",
    "SCENARIOS",
    "SCENARIO_CYCLE_S",
    "VITALS",
    "Effects",
    "Episode",
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

# Monitor artifacts with `artifacts=True`: mean events per patient-hour (Poisson processes).
ARTIFACT_RATES: Final[dict[str, float]] = {
    "motion": 3.0,  # HR +30..+60 bpm for 2-8 readings (1-4 s)
    "spo2_slip": 1.0,  # SpO2 reads 80-88 % for 1-2 readings (5-10 s)
    "probe_off": 2.0 / 24.0,  # SpO2 silent 40-90 s, or (one in three) ECG flat 20-60 s
    "sleep_dip": 0.5,  # per hour asleep: SpO2 -2..-4 points for 10-30 s
}
LEADS_OFF_SHARE: Final = 1.0 / 3.0  # share of probe-off events that are ECG leads off instead

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
    statistics do not depend on how often a vital is sampled. With a `bound`, the deviation
    is squashed softly (`bound * tanh(x / bound)`) so it never reaches `bound`.
    """

    __slots__ = ("_bound", "_last_ms", "_sigma", "_tau_ms", "_x")

    def __init__(
        self, rng: np.random.Generator, sigma: float, tau_s: float, t0_ms: int, bound: float | None = None
    ) -> None:
        self._sigma = sigma
        self._tau_ms = tau_s * 1000.0
        self._x = sigma * float(rng.standard_normal())
        self._last_ms = t0_ms
        self._bound = bound

    def at(self, t_ms: int, rng: np.random.Generator) -> float:
        dt = t_ms - self._last_ms
        if dt > 0:
            decay = math.exp(-dt / self._tau_ms)
            spread = self._sigma * math.sqrt(1.0 - decay * decay)
            self._x = self._x * decay + spread * float(rng.standard_normal())
            self._last_ms = t_ms
        if self._bound is None:
            return self._x
        return self._bound * math.tanh(self._x / self._bound)


@dataclass(frozen=True, slots=True)
class _Physiology:
    """Baseline ranges (drawn per patient) and random-walk sizes (sigma, tau s, soft bound)."""

    hr0: tuple[float, float]
    sbp0: tuple[float, float]
    dbp0: tuple[float, float]
    spo2_0: tuple[float, float]
    rr0: tuple[float, float]
    temp0: tuple[float, float]
    glu0: tuple[float, float]
    hr: tuple[float, float, float | None]
    sbp: tuple[float, float, float | None]
    dbp: tuple[float, float, float | None]
    spo2: tuple[float, float, float | None]
    rr: tuple[float, float, float | None]
    temp: tuple[float, float, float | None]
    glu: tuple[float, float, float | None]


# The original model, kept byte for byte with `artifacts=False`.
_CLASSIC: Final = _Physiology(
    hr0=(60.0, 90.0),
    sbp0=(110.0, 140.0),
    dbp0=(65.0, 85.0),
    spo2_0=(95.0, 99.0),
    rr0=(12.0, 18.0),
    temp0=(36.4, 37.2),
    glu0=(100.0, 140.0),  # normal: never near the 70 mg/dL hypo limit
    hr=(4.0, 600.0, None),
    sbp=(6.0, 1800.0, None),
    dbp=(4.0, 1800.0, None),
    spo2=(0.6, 300.0, None),
    rr=(1.2, 300.0, None),
    temp=(0.15, 3600.0, None),
    glu=(10.0, 3600.0, None),
)

# With `artifacts=True`: a normal patient stays inside the default alarm limits (rules/*.toml),
# so that the alarms a ward day raises come from artifacts and deteriorations, not from walks.
# Same draws in the same order as _CLASSIC; only ranges and soft bounds differ:
#   HR   64-92 +-8:    awake >= 56, asleep (x0.9) >= 50.4, so even a sleep state that reaches
#                      the engine 2 min late never holds < 50 (hr_low); <= 100 awake (hr_high 120).
#   SBP  120-140 +-10: awake 110-150 (advisory <= 100, high > 160), asleep (x0.88) >= 96.8
#                      (bp_sys_low <= 90); an hourly change beyond -20 % needs > 3 sigma.
#   DBP  68-78 +-6:    awake 62-84 (< 50, > 90), asleep (x0.85) >= 52.7 (< 45).
#   SpO2 95-99 +-1.5:  awake >= 93.5, asleep >= 92.5 and >= 88.5 in a 4-point sleep dip.
#   RR   12-18 +-2.5:  9.5-20.5 (rr_elevated >= 21, rr_low <= 8).
#   Temp 36.4-37.2 +-0.3: 35.8-37.5 (NEWS2 <= 36.0 scores 1 only); a 4-h rise is at most 0.6 of
#                      walk plus the 0.3 wake-up step (temp_rising +1.0).
#   Glucose 100-140 +-25: 75-165 (glucose_low < 70, glucose_high > 180).
_WARD: Final = _Physiology(
    hr0=(64.0, 92.0),
    sbp0=(120.0, 140.0),
    dbp0=(68.0, 78.0),
    spo2_0=(95.0, 99.0),
    rr0=(12.0, 18.0),
    temp0=(36.4, 37.2),
    glu0=(100.0, 140.0),
    hr=(4.0, 600.0, 8.0),
    sbp=(6.0, 1800.0, 10.0),
    dbp=(4.0, 1800.0, 6.0),
    spo2=(0.6, 300.0, 1.5),
    rr=(1.2, 300.0, 2.5),
    temp=(0.15, 3600.0, 0.3),
    glu=(10.0, 3600.0, 25.0),
)


@dataclass(frozen=True, slots=True)
class Effects:
    """Changes to one patient at one instant: additive, then a pull towards a target.

    A pull of 0 leaves the vital alone, 1 puts its true value on the target (the reading
    still carries measurement noise). `noise_clip`, when positive, bounds that noise to
    +-`noise_clip` standard deviations, so a scripted level stays on its side of a limit.
    `silent` vitals send nothing.
    """

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
    rr_target: float = 0.0
    rr_pull: float = 0.0
    sbp_target: float = 0.0
    sbp_pull: float = 0.0
    dbp_target: float = 0.0
    dbp_pull: float = 0.0
    glu_add: float = 0.0
    glu_target: float = 0.0
    glu_pull: float = 0.0
    noise_clip: float = 0.0

    def scaled(self, weight: float) -> Effects:
        """These effects at `weight` (0..1) of their strength: adds and pulls scale, targets stay."""
        return Effects(
            hr_add=self.hr_add * weight,
            hr_target=self.hr_target,
            hr_pull=self.hr_pull * weight,
            spo2_add=self.spo2_add * weight,
            spo2_target=self.spo2_target,
            spo2_pull=self.spo2_pull * weight,
            rr_add=self.rr_add * weight,
            temp_add=self.temp_add * weight,
            temp_target=self.temp_target,
            temp_pull=self.temp_pull * weight,
            sbp_add=self.sbp_add * weight,
            dbp_add=self.dbp_add * weight,
            silent=self.silent,
            rr_target=self.rr_target,
            rr_pull=self.rr_pull * weight,
            sbp_target=self.sbp_target,
            sbp_pull=self.sbp_pull * weight,
            dbp_target=self.dbp_target,
            dbp_pull=self.dbp_pull * weight,
            glu_add=self.glu_add * weight,
            glu_target=self.glu_target,
            glu_pull=self.glu_pull * weight,
            noise_clip=self.noise_clip,
        )


_NO_EFFECTS: Final = Effects()


def _stronger(a_target: float, a_pull: float, b_target: float, b_pull: float) -> tuple[float, float]:
    return (a_target, a_pull) if a_pull >= b_pull else (b_target, b_pull)


def _combine(a: Effects, b: Effects) -> Effects:
    """Both at once: adds sum, each vital follows the stronger pull, silences join."""
    hr_t, hr_p = _stronger(a.hr_target, a.hr_pull, b.hr_target, b.hr_pull)
    spo2_t, spo2_p = _stronger(a.spo2_target, a.spo2_pull, b.spo2_target, b.spo2_pull)
    temp_t, temp_p = _stronger(a.temp_target, a.temp_pull, b.temp_target, b.temp_pull)
    rr_t, rr_p = _stronger(a.rr_target, a.rr_pull, b.rr_target, b.rr_pull)
    sbp_t, sbp_p = _stronger(a.sbp_target, a.sbp_pull, b.sbp_target, b.sbp_pull)
    dbp_t, dbp_p = _stronger(a.dbp_target, a.dbp_pull, b.dbp_target, b.dbp_pull)
    glu_t, glu_p = _stronger(a.glu_target, a.glu_pull, b.glu_target, b.glu_pull)
    clips = [c for c in (a.noise_clip, b.noise_clip) if c > 0]
    return Effects(
        hr_add=a.hr_add + b.hr_add,
        hr_target=hr_t,
        hr_pull=hr_p,
        spo2_add=a.spo2_add + b.spo2_add,
        spo2_target=spo2_t,
        spo2_pull=spo2_p,
        rr_add=a.rr_add + b.rr_add,
        temp_add=a.temp_add + b.temp_add,
        temp_target=temp_t,
        temp_pull=temp_p,
        sbp_add=a.sbp_add + b.sbp_add,
        dbp_add=a.dbp_add + b.dbp_add,
        silent=a.silent | b.silent,
        rr_target=rr_t,
        rr_pull=rr_p,
        sbp_target=sbp_t,
        sbp_pull=sbp_p,
        dbp_target=dbp_t,
        dbp_pull=dbp_p,
        glu_add=a.glu_add + b.glu_add,
        glu_target=glu_t,
        glu_pull=glu_p,
        noise_clip=min(clips) if clips else 0.0,
    )


@dataclass(frozen=True, slots=True)
class Episode:
    """A scripted change to one patient: `effects` fade in linearly over `onset_ms` from
    `start_ms`, hold at full strength for `hold_ms`, then fade out over `recovery_ms`."""

    start_ms: int
    onset_ms: int
    hold_ms: int
    recovery_ms: int
    effects: Effects

    @property
    def hold_from_ms(self) -> int:
        """When the full strength is reached."""
        return self.start_ms + self.onset_ms

    @property
    def hold_until_ms(self) -> int:
        """When the recovery starts."""
        return self.start_ms + self.onset_ms + self.hold_ms

    @property
    def end_ms(self) -> int:
        """When the effects are gone."""
        return self.hold_until_ms + self.recovery_ms

    def weight(self, t_ms: int) -> float:
        """Strength at `t_ms`: 0 outside [start_ms, end_ms), 1 during the hold."""
        if t_ms < self.start_ms or t_ms >= self.end_ms:
            return 0.0
        if t_ms < self.hold_from_ms:
            return (t_ms - self.start_ms) / self.onset_ms
        if t_ms < self.hold_until_ms:
            return 1.0
        return 1.0 - (t_ms - self.hold_until_ms) / self.recovery_ms


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


def _effects(scenario: str, f: float) -> Effects:
    """What `scenario` does to patient p001 at run fraction `f` (0..1)."""
    if scenario == "desaturation":
        e = _episode(f, 0.20, 0.50, 0.05)
        return Effects(spo2_target=84.0, spo2_pull=e, rr_add=5.0 * e, hr_add=8.0 * e)
    if scenario == "fever":
        return Effects(temp_target=39.5, temp_pull=f, hr_add=15.0 * f, rr_add=2.0 * f)
    if scenario == "bradycardia":
        return Effects(hr_target=38.0, hr_pull=_episode(f, 0.30, 0.60, 0.02))
    if scenario == "dropout":
        if 0.30 <= f < 0.60:
            return Effects(silent=frozenset({"spo2", "heart_rate"}))
        return _NO_EFFECTS
    if scenario == "deterioration":
        # Ends near SpO2 -10, RR +14, HR +45, SBP -45: NEWS2 climbs from about 0 to 8 or more.
        e = _ramp(f, 0.10, 0.90)
        return Effects(
            spo2_add=-10.0 * e,
            rr_add=14.0 * e,
            hr_add=45.0 * e,
            sbp_add=-45.0 * e,
            dbp_add=-15.0 * e,
            temp_add=1.2 * e,
        )
    return _NO_EFFECTS


@dataclass(frozen=True, slots=True)
class _Artifact:
    """One artifact event over [start_ms, end_ms): `size` is bpm (motion), points (sleep dip)
    or unused; `values` are the slipped SpO2 readings; `vital` is what a probe-off silences."""

    start_ms: int
    end_ms: int
    size: float = 0.0
    values: tuple[float, ...] = ()
    vital: str = ""


def _motion(rng: np.random.Generator, t_ms: int) -> _Artifact:
    readings = int(rng.integers(2, 9))  # 1-4 s of heart-rate readings
    return _Artifact(t_ms, t_ms + readings * PERIODS_MS["heart_rate"], size=float(rng.uniform(30.0, 60.0)))


def _slip(rng: np.random.Generator, t_ms: int) -> _Artifact:
    readings = int(rng.integers(1, 3))  # 1-2 SpO2 readings, 5-10 s
    values = tuple(round(float(v), 1) for v in rng.uniform(80.0, 88.0, readings))
    return _Artifact(t_ms, t_ms + readings * PERIODS_MS["spo2"], values=values)


def _probe_off(rng: np.random.Generator, t_ms: int) -> _Artifact:
    if rng.random() < LEADS_OFF_SHARE:
        return _Artifact(t_ms, t_ms + int(rng.uniform(20_000.0, 60_000.0)), vital="ecg")
    return _Artifact(t_ms, t_ms + int(rng.uniform(40_000.0, 90_000.0)), vital="spo2")


def _sleep_dip(rng: np.random.Generator, t_ms: int) -> _Artifact:
    depth = float(rng.uniform(2.0, 4.0))
    return _Artifact(t_ms, t_ms + int(rng.uniform(10_000.0, 30_000.0)), size=depth)


class _Process:
    """A Poisson process of artifact events, drawn lazily in event time from its own generator.

    Events never overlap: the next one starts an exponential gap after the previous one ends.
    `at` must be asked with non-decreasing times (a patient's stream is in event-time order).
    """

    __slots__ = ("_current", "_draw", "_mean_gap_ms", "_rng")

    def __init__(
        self,
        seed: np.random.SeedSequence,
        per_hour: float,
        draw: Callable[[np.random.Generator, int], _Artifact],
        start_ms: int,
    ) -> None:
        self._rng = np.random.default_rng(seed)
        self._mean_gap_ms = _HOUR_MS / per_hour
        self._draw = draw
        self._current = draw(self._rng, start_ms + self._gap())

    def _gap(self) -> int:
        return int(self._rng.exponential(self._mean_gap_ms))

    def upcoming(self, t_ms: int) -> _Artifact:
        """The event in progress at `t_ms`, or else the next one."""
        event = self._current
        while t_ms >= event.end_ms:
            event = self._draw(self._rng, event.end_ms + self._gap())
        self._current = event
        return event

    def at(self, t_ms: int) -> _Artifact | None:
        """The event in progress at `t_ms`, if any."""
        event = self.upcoming(t_ms)
        return event if t_ms >= event.start_ms else None


class _Artifacts:
    """What the monitors add to one patient's true readings (`artifacts=True`).

    Each kind is a Poisson process on its own generator, a child of the patient's seed
    sequence (seed, index): deterministic per patient, and drawing artifacts never shifts the
    patient's physiology stream.
    """

    __slots__ = ("_motion", "_probe_off", "_sleep_dip", "_slip")

    def __init__(self, seed: int, index: int, start_ms: int) -> None:
        motion, slip, probe_off, sleep_dip = np.random.SeedSequence([seed, index]).spawn(4)
        self._motion = _Process(motion, ARTIFACT_RATES["motion"], _motion, start_ms)
        self._slip = _Process(slip, ARTIFACT_RATES["spo2_slip"], _slip, start_ms)
        self._probe_off = _Process(probe_off, ARTIFACT_RATES["probe_off"], _probe_off, start_ms)
        self._sleep_dip = _Process(sleep_dip, ARTIFACT_RATES["sleep_dip"], _sleep_dip, start_ms)

    @property
    def processes(self) -> dict[str, _Process]:
        """The event processes by `ARTIFACT_RATES` name (sleep dips count asleep or not)."""
        return {
            "motion": self._motion,
            "spo2_slip": self._slip,
            "probe_off": self._probe_off,
            "sleep_dip": self._sleep_dip,
        }

    def sleep_dip(self, t_ms: int) -> float:
        """SpO2 points taken off the true value now: a trapezoid, a quarter of the dip each edge."""
        dip = self._sleep_dip.at(t_ms)
        if dip is None:
            return 0.0
        x = (t_ms - dip.start_ms) / (dip.end_ms - dip.start_ms)
        return dip.size * min(1.0, 4.0 * x, 4.0 * (1.0 - x))

    def apply(self, vital: str, t_ms: int, value: object) -> object:
        """The reading the monitor sends instead of `value`; `_OFF` when it sends nothing."""
        if vital == "heart_rate":
            spike = self._motion.at(t_ms)
            if spike is not None and isinstance(value, int):
                return value + round(spike.size)
        elif vital == "spo2":
            off = self._probe_off.at(t_ms)
            if off is not None and off.vital == "spo2":
                return _OFF
            slip = self._slip.at(t_ms)
            if slip is not None:
                return slip.values[(t_ms - slip.start_ms) // PERIODS_MS["spo2"]]
        elif vital == "ecg":
            off = self._probe_off.at(t_ms)
            if off is not None and off.vital == "ecg":
                return {"hz": ECG_HZ, "samples": [0.0] * ECG_HZ}  # leads off: flat line
        return value


_OFF: Final = object()


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
        *,
        artifacts: bool = False,
        episodes: Sequence[Episode] = (),
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
        self._episodes = tuple(sorted(episodes, key=lambda e: e.start_ms))
        self._artifacts = _Artifacts(seed, index, start_ms) if artifacts else None
        self._topics = {v: f"monitorme/{ward}/{self.pid}/{v}" for v in VITALS}
        self._devices = {v: f"{self.pid}-{v}" for v in VITALS}
        self._seq = dict.fromkeys(VITALS, 0)

        ph = _WARD if artifacts else _CLASSIC
        self.hr0 = float(rng.uniform(*ph.hr0))
        self.sbp0 = float(rng.uniform(*ph.sbp0))
        self.dbp0 = float(rng.uniform(*ph.dbp0))
        self.spo2_0 = float(rng.uniform(*ph.spo2_0))
        self.rr0 = float(rng.uniform(*ph.rr0))
        self.temp0 = float(rng.uniform(*ph.temp0))
        self.glu0 = float(rng.uniform(*ph.glu0))
        self.sleep_offset_ms = int(rng.integers(-_HOUR_MS, _HOUR_MS + 1))
        self._ecg_gain = float(rng.uniform(0.85, 1.15))

        self._hr = _Walk(rng, ph.hr[0], ph.hr[1], start_ms, ph.hr[2])
        self._sbp = _Walk(rng, ph.sbp[0], ph.sbp[1], start_ms, ph.sbp[2])
        self._dbp = _Walk(rng, ph.dbp[0], ph.dbp[1], start_ms, ph.dbp[2])
        self._spo2 = _Walk(rng, ph.spo2[0], ph.spo2[1], start_ms, ph.spo2[2])
        self._rr = _Walk(rng, ph.rr[0], ph.rr[1], start_ms, ph.rr[2])
        self._temp = _Walk(rng, ph.temp[0], ph.temp[1], start_ms, ph.temp[2])
        self._glu = _Walk(rng, ph.glu[0], ph.glu[1], start_ms, ph.glu[2])

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

    def _state(self, t_ms: int) -> tuple[bool, Effects]:
        asleep = is_asleep(t_ms, self.sleep_offset_ms)
        fx = _NO_EFFECTS if self._scenario == "normal" else _effects(self._scenario, self._fraction(t_ms))
        for episode in self._episodes:
            if episode.start_ms > t_ms:
                break
            weight = episode.weight(t_ms)
            if weight > 0.0:
                scripted = episode.effects.scaled(weight)
                fx = scripted if fx is _NO_EFFECTS else _combine(fx, scripted)
        return asleep, fx

    def _true_hr(self, t_ms: int, asleep: bool, fx: Effects) -> float:
        hr = self.hr0 + self._hr.at(t_ms, self._rng)
        if asleep:
            hr *= 0.90  # CLINICAL.md §3: a normal dipper's HR falls ~10 % asleep
        hr += fx.hr_add
        hr += (fx.hr_target - hr) * fx.hr_pull
        return min(max(hr, 25.0), 220.0)

    def _true_rr(self, t_ms: int, fx: Effects) -> float:
        # CLINICAL.md §3: breathing rate does not change with sleep.
        rr = self.rr0 + self._rr.at(t_ms, self._rng) + fx.rr_add
        if fx.rr_pull:
            rr += (fx.rr_target - rr) * fx.rr_pull
        return min(max(rr, 4.0), 60.0)

    def _noise(self, sigma: float, clip: float = 0.0) -> float:
        noise = sigma * float(self._rng.standard_normal())
        if clip > 0.0:
            return min(max(noise, -clip * sigma), clip * sigma)
        return noise

    def _value(self, vital: str, t_ms: int, asleep: bool, fx: Effects) -> object:
        clip = fx.noise_clip
        if vital == "heart_rate":
            return round(self._true_hr(t_ms, asleep, fx) + self._noise(1.5, clip))
        if vital == "respiration":
            return round(min(max(self._true_rr(t_ms, fx) + self._noise(0.6, clip), 0.0), 80.0), 1)
        if vital == "spo2":
            spo2 = self.spo2_0 + self._spo2.at(t_ms, self._rng) - (1.0 if asleep else 0.0)
            if asleep and self._artifacts is not None:
                spo2 -= self._artifacts.sleep_dip(t_ms)
            spo2 += fx.spo2_add
            spo2 += (fx.spo2_target - spo2) * fx.spo2_pull
            return round(min(max(spo2 + self._noise(0.4, clip), 50.0), 100.0), 1)
        if vital == "temperature":
            temp = self.temp0 + self._temp.at(t_ms, self._rng) - (0.3 if asleep else 0.0)
            temp += fx.temp_add
            temp += (fx.temp_target - temp) * fx.temp_pull + self._noise(0.03, clip)
            return round(min(max(temp, 33.0), 42.0), 2)
        if vital == "glucose":
            glu = self.glu0 + self._glu.at(t_ms, self._rng)
            if fx.glu_add or fx.glu_pull:
                glu += fx.glu_add
                glu += (fx.glu_target - glu) * fx.glu_pull
            glu += self._noise(2.0, clip)
            return round(min(max(glu, 20.0), 600.0), 1)
        if vital == "blood_pressure":
            return self._blood_pressure(t_ms, asleep, fx)
        if vital == "sleep":
            return "asleep" if asleep else "awake"
        return self._ecg(t_ms, asleep, fx)

    def _blood_pressure(self, t_ms: int, asleep: bool, fx: Effects) -> dict[str, int]:
        sbp = self.sbp0 + self._sbp.at(t_ms, self._rng)
        dbp = self.dbp0 + self._dbp.at(t_ms, self._rng)
        if asleep:
            # CLINICAL.md §3: night/day ratio ~0.87 systolic, ~0.83 diastolic.
            sbp *= 0.88
            dbp *= 0.85
        if fx.sbp_pull:
            sbp += (fx.sbp_target - sbp) * fx.sbp_pull
        if fx.dbp_pull:
            dbp += (fx.dbp_target - dbp) * fx.dbp_pull
        sbp = min(max(sbp + fx.sbp_add + self._noise(3.0, fx.noise_clip), 50.0), 250.0)
        dbp = min(max(dbp + fx.dbp_add + self._noise(2.0, fx.noise_clip), 30.0), sbp - 15.0)
        s, d = round(sbp), round(dbp)
        return {"systolic": s, "diastolic": d, "mean": round((s + 2 * d) / 3)}

    def _ecg(self, t_ms: int, asleep: bool, fx: Effects) -> dict[str, object]:
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
        artifacts = self._artifacts
        while nxt and nxt[0][0] < self._end_ms:
            ts, k = nxt[0]
            vital = VITALS[k]
            heapq.heapreplace(nxt, (ts + PERIODS_MS[vital], k))
            asleep, fx = self._state(ts)
            if vital in fx.silent:
                continue
            value = self._value(vital, ts, asleep, fx)
            if artifacts is not None:
                # The true value is computed even when the monitor drops it, so the patient's
                # physiology does not depend on when its artifacts happen.
                value = artifacts.apply(vital, ts, value)
                if value is _OFF:
                    continue
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
    artifacts: bool = False,
    episodes: Mapping[str, Sequence[Episode]] | None = None,
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
        artifacts: add what real monitors see, for every patient, at `ARTIFACT_RATES`:
            motion spikes in heart rate, SpO2 probe slips, SpO2 probe or ECG leads off
            (silence, flat ECG), SpO2 dips in sleep. It also switches to the ward physiology,
            whose baselines and bounded random walks keep a normal patient inside the default
            alarm limits. False (the default) keeps the original stream byte for byte.
        episodes: scripted changes per patient id (`Episode`), on top of the scenario.

    Returns:
        An iterator of `SimMessage` sorted by `ts_ms`.

    Raises:
        ValueError: unknown scenario, negative patient count or duration, episodes for a
            patient not in the ward.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    if not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    scripts = dict(episodes or {})
    unknown = sorted(set(scripts) - set(patient_ids(patients)))
    if unknown:
        raise ValueError(f"episodes for patients not in a ward of {patients}: {', '.join(unknown)}")
    duration_ms = duration_s * 1000.0
    end_ms = start_ms + duration_ms
    streams = [
        _Patient(
            ward,
            i,
            start_ms,
            end_ms,
            duration_ms,
            scenario,
            seed,
            artifacts=artifacts,
            episodes=scripts.get(f"p{i + 1:03d}", ()),
        ).stream()
        for i in range(patients)
    ]
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

"""A realistic ward day: every patient with monitor artifacts, a few with one scripted deterioration.

Pure and deterministic, no I/O: replay the stream through the analysis engine and compare the
alerts it raises with the `Deterioration` list to measure alarm burden and detection delay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from monitorme.sim.model import Effects, Episode, SimMessage, generate_ward, patient_ids

__all__ = ["DETERIORATION_RULES", "KINDS", "Deterioration", "ward_day"]

_MINUTE_MS: Final = 60_000
_HOUR_MS: Final = 3_600_000
# Nothing happens in the first hour: the engine's baselines (medians, trends) fill first.
_QUIET_START_MS: Final = _HOUR_MS
# A deterioration steadies its scripted levels: measurement noise within +-0.5 sd, so a level
# drawn inside a rule's range stays there (e.g. SBP 80-86 reads 78.5-87.5).
_NOISE_CLIP: Final = 0.5
# Keeps ward_day's own draws apart from every patient's stream (those have no spawn key).
_SPAWN_KEY: Final = 0x5741_5244


@dataclass(frozen=True)
class Deterioration:
    """One scripted deterioration and the alert rules that SHOULD fire for it.

    `start_ms` is when the physiology starts to change; `end_ms` when it is back to the
    patient's normal (the abnormal level is held in between, after an onset ramp and before a
    recovery ramp). `rules[0]` is the primary rule, whose delay from `start_ms` is the target.
    """

    patient: str
    kind: str
    start_ms: int
    end_ms: int
    rules: tuple[str, ...]

    @property
    def primary(self) -> str:
        """The rule whose delay from `start_ms` is the detection target."""
        return self.rules[0]


@dataclass(frozen=True, slots=True)
class _Kind:
    rules: tuple[str, ...]
    onset_s: tuple[float, float]
    hold_s: tuple[float, float]
    recovery_s: tuple[float, float]
    effects: Callable[[np.random.Generator], Effects]

    @property
    def shortest_ms(self) -> int:
        return round(1000 * (self.onset_s[0] + self.hold_s[0] + self.recovery_s[0]))


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _desaturation(rng: np.random.Generator) -> Effects:
    return Effects(spo2_target=_u(rng, 84.0, 87.0), spo2_pull=1.0, hr_add=8.0, rr_add=4.0, noise_clip=_NOISE_CLIP)


def _bradycardia(rng: np.random.Generator) -> Effects:
    return Effects(hr_target=_u(rng, 35.0, 38.0), hr_pull=1.0, noise_clip=_NOISE_CLIP)


def _tachycardia(rng: np.random.Generator) -> Effects:
    return Effects(hr_target=_u(rng, 145.0, 160.0), hr_pull=1.0, rr_add=3.0, noise_clip=_NOISE_CLIP)


def _fever(rng: np.random.Generator) -> Effects:
    return Effects(temp_target=_u(rng, 39.4, 39.8), temp_pull=1.0, hr_add=15.0, rr_add=2.0, noise_clip=_NOISE_CLIP)


def _hypotension(rng: np.random.Generator) -> Effects:
    return Effects(
        sbp_target=_u(rng, 80.0, 86.0),  # read 78.5-87.5 with the clipped noise
        sbp_pull=1.0,
        dbp_target=_u(rng, 46.0, 54.0),
        dbp_pull=1.0,
        hr_add=15.0,  # compensatory
        noise_clip=_NOISE_CLIP,
    )


def _hypoglycaemia(rng: np.random.Generator) -> Effects:
    return Effects(glu_target=_u(rng, 45.0, 52.0), glu_pull=1.0, hr_add=10.0, noise_clip=_NOISE_CLIP)


def _tachypnoea(rng: np.random.Generator) -> Effects:
    return Effects(rr_target=_u(rng, 26.0, 32.0), rr_pull=1.0, hr_add=10.0, noise_clip=_NOISE_CLIP)


def _sepsis(rng: np.random.Generator) -> Effects:
    # At full strength NEWS2 >= 7 whatever the draw: RR >= 24 (2), HR >= 110 (>= 1),
    # SBP <= 100 (2; drawn <= 98.5 so the +-1.5 noise never reads 101), temp 38.5-39.0 (1),
    # SpO2 <= 94 (>= 1). On the way up it passes 5-6.
    return Effects(
        rr_target=_u(rng, 24.0, 26.0),
        rr_pull=1.0,
        hr_target=_u(rng, 110.0, 125.0),
        hr_pull=1.0,
        sbp_target=_u(rng, 95.0, 98.5),
        sbp_pull=1.0,
        dbp_target=_u(rng, 52.0, 60.0),
        dbp_pull=1.0,
        temp_target=_u(rng, 38.5, 39.0),
        temp_pull=1.0,
        spo2_target=_u(rng, 92.0, 94.0),
        spo2_pull=1.0,
        noise_clip=_NOISE_CLIP,
    )


# Kind -> rules and timing (onset ramp, hold at the abnormal level, recovery ramp; seconds).
_KINDS: Final[dict[str, _Kind]] = {
    "desaturation": _Kind(("spo2_low",), (60, 180), (300, 900), (120, 300), _desaturation),
    "bradycardia": _Kind(("hr_extreme", "hr_low"), (30, 60), (120, 360), (60, 120), _bradycardia),
    "tachycardia": _Kind(("hr_extreme_high", "hr_high"), (30, 60), (120, 360), (60, 180), _tachycardia),
    "fever": _Kind(("temp_high",), (3600, 7200), (3600, 10800), (3600, 5400), _fever),
    # A hold of >= 1 h spans at least one hourly cuff reading.
    "hypotension": _Kind(("bp_sys_low",), (600, 1200), (3600, 6000), (1200, 1800), _hypotension),
    "hypoglycaemia": _Kind(("glucose_low_l2", "glucose_low"), (1200, 1800), (1800, 2700), (900, 1800), _hypoglycaemia),
    "tachypnoea": _Kind(("rr_high",), (60, 180), (300, 900), (120, 300), _tachypnoea),
    "sepsis": _Kind(("news2_medium", "news2_high"), (3600, 7200), (3600, 7200), (3600, 5400), _sepsis),
}
KINDS: Final = tuple(_KINDS)
DETERIORATION_RULES: Final[Mapping[str, tuple[str, ...]]] = {k: v.rules for k, v in _KINDS.items()}


def _ms(rng: np.random.Generator, span_s: tuple[float, float]) -> int:
    return round(1000 * float(rng.uniform(*span_s)))


def _place(
    rng: np.random.Generator, kind: str, patient: str, earliest_ms: int, latest_end_ms: int
) -> tuple[Episode, Deterioration]:
    spec = _KINDS[kind]
    onset, hold, recovery = _ms(rng, spec.onset_s), _ms(rng, spec.hold_s), _ms(rng, spec.recovery_s)
    room = latest_end_ms - earliest_ms
    if onset + hold + recovery > room:  # a short run: squeeze the hold, never under its minimum
        hold = max(round(1000 * spec.hold_s[0]), room - onset - recovery)
        if onset + hold + recovery > room:
            onset, recovery = round(1000 * spec.onset_s[0]), round(1000 * spec.recovery_s[0])
            hold = room - onset - recovery
    total = onset + hold + recovery
    start = earliest_ms + int(rng.integers(0, room - total + 1))
    episode = Episode(start, onset, hold, recovery, spec.effects(rng))
    return episode, Deterioration(patient, kind, start, episode.end_ms, spec.rules)


def ward_day(
    ward: str,
    patients: int,
    start_ms: int,
    *,
    hours: float = 24.0,
    seed: int = 0,
    deteriorations: int | None = None,
) -> tuple[Iterator[SimMessage], list[Deterioration]]:
    """A ward's readings for `hours`, artifacts on, with scripted deteriorations.

    Args:
        ward: ward id used in every topic.
        patients: number of patients, `p001`, `p002`, ...
        start_ms: event time of the start, epoch ms.
        hours: event-time length of the day.
        seed: same seed, same day, byte for byte.
        deteriorations: how many patients deteriorate (one deterioration each); default about
            one in five, at least one when there is a patient.

    Returns:
        The stream (lazy, sorted by `ts_ms`) and the deteriorations, sorted by start. Each
        starts after the first hour and is over (recovered) before the day ends. Kinds are
        spread evenly (a shuffled cycle through `KINDS`), limited to those that fit the day.

    Raises:
        ValueError: negative or too many deteriorations, a day too short to hold any, bad sizes.
    """
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    if not 0 < hours < float("inf"):
        raise ValueError(f"hours must be positive and finite, got {hours}")
    count = (max(1, round(patients / 5)) if patients else 0) if deteriorations is None else deteriorations
    if not 0 <= count <= patients:
        raise ValueError(f"deteriorations must be between 0 and {patients}, got {deteriorations}")
    end_ms = start_ms + round(hours * _HOUR_MS)
    earliest_ms = start_ms + _QUIET_START_MS
    fitting = [k for k in KINDS if _KINDS[k].shortest_ms <= end_ms - earliest_ms]
    if count and not fitting:
        raise ValueError(f"a day of {hours} h is too short for a deterioration after the first hour")

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPAWN_KEY,)))
    chosen = sorted(int(i) for i in rng.choice(patients, size=count, replace=False)) if count else []
    kinds: list[str] = []
    while len(kinds) < count:
        kinds.extend(fitting[int(i)] for i in rng.permutation(len(fitting)))
    ids = patient_ids(patients)
    episodes: dict[str, list[Episode]] = {}
    listed: list[Deterioration] = []
    for index, kind in zip(chosen, kinds[:count], strict=True):
        episode, deterioration = _place(rng, kind, ids[index], earliest_ms, end_ms)
        episodes[ids[index]] = [episode]
        listed.append(deterioration)
    listed.sort(key=lambda d: (d.start_ms, d.patient))
    stream = generate_ward(
        ward, patients, start_ms, (end_ms - start_ms) / 1000.0, seed=seed, artifacts=True, episodes=episodes
    )
    return stream, listed

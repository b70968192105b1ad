"""ECG chunk operators: R-peaks carried across one-second chunks, HR from RR, pause, asystole, flat line.

A deliberately simple detector (CLINICAL.md §8): an R-peak is a local maximum of the
absolute deviation from the baseline (median) that is at least 0.15 mV (AAMI EC13 minimum
QRS) and at least half the recent R amplitude, with a 250 ms refractory period. The last
samples of a chunk, which cannot yet be confirmed as a maximum, are looked at again with
the next chunk, so a beat on a chunk boundary is found exactly once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from monitorme.core.window import FloatArray

MIN_QRS_MV = 0.15
_REFRACTORY_S = 0.25
_NEIGHBOURHOOD_S = 0.1
_TAIL_S = 0.5
_RR_KEEP = 10


@dataclass(frozen=True, slots=True)
class EcgFeatures:
    """What one chunk told: channels the rules can use (``ecg.hr``, ``ecg.max_rr_s``, ...)."""

    beats_ms: tuple[int, ...]
    hr: float | None  # 60 / mean of the last RR intervals
    max_rr_s: float | None  # longest RR interval that ended in this chunk
    since_qrs_s: float | None  # chunk end minus the last QRS; None while the lead is off (flat)
    flat: bool  # exactly constant or railed samples: a technical fault, not asystole

    def channels(self) -> dict[str, float]:
        out = {"flat": 1.0 if self.flat else 0.0}
        if self.hr is not None:
            out["hr"] = self.hr
        if self.max_rr_s is not None:
            out["max_rr_s"] = self.max_rr_s
        if self.since_qrs_s is not None:
            out["since_qrs_s"] = self.since_qrs_s
        return out


def is_flat(samples: FloatArray) -> bool:
    """Lead off: every sample equal, or most samples stuck at one rail."""
    if len(samples) < 2:
        return False
    low, high = float(samples.min()), float(samples.max())
    if high - low == 0:
        return True
    railed = np.count_nonzero((samples == low) | (samples == high))
    return bool(railed > 0.5 * len(samples))


class EcgAnalyzer:
    """Per-patient detector state; ``feed`` one chunk at a time in event-time order."""

    __slots__ = ("_amplitudes", "_hz", "_last_qrs_ms", "_rr_s", "_tail", "_tail_start_ms", "_until_ms")

    def __init__(self) -> None:
        self._tail: FloatArray = np.empty(0)
        self._tail_start_ms = 0.0
        self._hz = 0.0
        self._until_ms = -1.0  # samples up to here have been judged
        self._last_qrs_ms: float | None = None
        self._rr_s: deque[float] = deque(maxlen=_RR_KEEP)
        self._amplitudes: deque[float] = deque(maxlen=8)

    def feed(self, ts_ms: int, hz: float, samples: FloatArray) -> EcgFeatures:
        """Analyse one chunk whose first sample was measured at ``ts_ms``."""
        step_ms = 1000.0 / hz
        end_ms = ts_ms + len(samples) * step_ms
        flat = is_flat(samples)
        contiguous = hz == self._hz and abs(self._tail_start_ms + len(self._tail) * step_ms - ts_ms) < step_ms
        if flat:
            self._reset_signal(hz)
            return EcgFeatures((), self.hr, None, None, True)
        if contiguous:
            x = np.concatenate([self._tail, samples])
            start_ms = self._tail_start_ms
        else:  # a gap or a new rate: start over from this chunk, keep the RR history
            x, start_ms = np.asarray(samples, dtype=np.float64), float(ts_ms)
            self._until_ms = start_ms - step_ms
        dev = np.abs(x - np.median(x))
        # learning phase: with no beats yet, the largest swing in view stands in for the R amplitude,
        # so a T wave is not taken for a QRS before the first beats are known
        recent = float(np.median(self._amplitudes)) if self._amplitudes else float(dev.max())
        threshold = max(MIN_QRS_MV, 0.5 * recent)
        half = max(1, round(_NEIGHBOURHOOD_S * hz))
        confirmable = len(x) - half  # beyond this a larger sample may still come in the next chunk
        beats: list[int] = []
        max_rr: float | None = None
        for i in np.flatnonzero(dev >= threshold).tolist():
            t = start_ms + i * step_ms
            if i >= confirmable or t <= self._until_ms:
                continue
            if dev[i] < dev[max(0, i - half) : i + half + 1].max() or (
                i > 0 and dev[i - 1] == dev[i]  # a plateau counts once, at its first sample
            ):
                continue
            if self._last_qrs_ms is not None and t - self._last_qrs_ms < _REFRACTORY_S * 1000:
                continue
            if self._last_qrs_ms is not None:
                rr = (t - self._last_qrs_ms) / 1000
                self._rr_s.append(rr)
                max_rr = rr if max_rr is None else max(max_rr, rr)
            self._last_qrs_ms = t
            self._amplitudes.append(float(dev[i]))
            beats.append(round(t))
        self._until_ms = start_ms + (confirmable - 1) * step_ms
        keep = min(len(x), max(round(_TAIL_S * hz), len(x) - confirmable + half))
        self._tail = x[len(x) - keep :]
        self._tail_start_ms = start_ms + (len(x) - keep) * step_ms
        self._hz = hz
        since = (end_ms - self._last_qrs_ms) / 1000 if self._last_qrs_ms is not None else None
        return EcgFeatures(tuple(beats), self.hr, max_rr, since, False)

    @property
    def hr(self) -> float | None:
        if len(self._rr_s) < 2:
            return None
        return 60.0 / (sum(self._rr_s) / len(self._rr_s))

    def _reset_signal(self, hz: float) -> None:
        self._tail = np.empty(0)
        self._hz = hz
        self._last_qrs_ms = None  # after leads-off, asystole timing starts afresh

"""ECG chunk operators: R-peaks carried across one-second chunks, HR from RR, pause, asystole, flat line.

A deliberately simple detector (CLINICAL.md §8): an R-peak is a local maximum of the
absolute deviation from the baseline (median) that is at least 0.15 mV (AAMI EC13 minimum
QRS) and at least half the recent R amplitude, with a 250 ms refractory period. The last
samples of a chunk, which cannot yet be confirmed as a maximum, are looked at again with
the next chunk, so a beat on a chunk boundary is found exactly once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from monitorme.core.window import FloatArray, median

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


def _median_of(values: Iterable[float]) -> float:
    """``float(np.median(values))`` of a few finite floats, in plain Python."""
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


def _tail_of(samples: npt.NDArray[np.floating[Any]], x: FloatArray, keep: int) -> npt.NDArray[np.floating[Any]]:
    """The last ``keep`` samples of ``x`` (the tail, then the chunk): a view of the chunk when they
    all come from it and it cannot change (a view of a reading's bytes), else a copy."""
    if keep <= len(samples) and not samples.flags.writeable:
        return samples[len(samples) - keep :]
    return x[len(x) - keep :].copy()


def is_flat(samples: npt.NDArray[np.floating[Any]]) -> bool:
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
        self._tail: npt.NDArray[np.floating[Any]] = np.empty(0)
        self._tail_start_ms = 0.0
        self._hz = 0.0
        self._until_ms = -1.0  # samples up to here have been judged
        self._last_qrs_ms: float | None = None
        self._rr_s: deque[float] = deque(maxlen=_RR_KEEP)
        self._amplitudes: deque[float] = deque(maxlen=8)

    def feed(self, ts_ms: int, hz: float, samples: npt.NDArray[np.floating[Any]]) -> EcgFeatures:
        """Analyse one chunk whose first sample was measured at ``ts_ms``.

        ``samples`` may be float32 (a view of the stored bytes): they are copied once, as float64,
        behind the tail kept from the previous chunk.
        """
        step_ms = 1000.0 / hz
        n = len(samples)
        end_ms = ts_ms + n * step_ms
        if is_flat(samples):
            self._reset_signal(hz)
            return EcgFeatures((), self.hr, None, None, True)
        tail = self._tail
        if hz == self._hz and abs(self._tail_start_ms + len(tail) * step_ms - ts_ms) < step_ms:  # contiguous
            x = np.empty(len(tail) + n)
            x[: len(tail)] = tail
            x[len(tail) :] = samples
            start_ms = self._tail_start_ms
        else:  # a gap or a new rate: start over from this chunk, keep the RR history
            x, start_ms = np.array(samples, dtype=np.float64), float(ts_ms)
            self._until_ms = start_ms - step_ms
        dev = np.abs(x - median(x))
        # learning phase: with no beats yet, the largest swing in view stands in for the R amplitude,
        # so a T wave is not taken for a QRS before the first beats are known
        recent = _median_of(self._amplitudes) if self._amplitudes else float(dev.max())
        threshold = max(MIN_QRS_MV, 0.5 * recent)
        half = max(1, round(_NEIGHBOURHOOD_S * hz))
        size = len(x)
        confirmable = size - half  # beyond this a larger sample may still come in the next chunk
        # candidates: over the threshold, confirmable, not judged with an earlier chunk
        first = max(0, math.floor((self._until_ms - start_ms) / step_ms) - 1)  # a margin: t is checked later
        candidates = np.flatnonzero(dev[first:confirmable] >= threshold) + first
        found: list[tuple[int, float]] = []
        if len(candidates):
            # each candidate's neighbourhood maximum, all at once (indices clipped to the chunk:
            # a repeated edge sample is inside the neighbourhood already, so the maxima are the same)
            around = np.clip(candidates[:, None] + np.arange(-half, half + 1), 0, size - 1)
            peaks = dev[around].max(axis=1).tolist()
            here = dev[candidates].tolist()
            before = dev[np.maximum(candidates - 1, 0)].tolist()
            for i, d, peak, prev in zip(candidates.tolist(), here, peaks, before, strict=True):
                if d >= peak and not (i > 0 and prev == d):  # a plateau counts once, at its first sample
                    found.append((i, d))
        beats, max_rr = self._accept(found, start_ms, step_ms)
        self._until_ms = start_ms + (confirmable - 1) * step_ms
        keep = min(size, max(round(_TAIL_S * hz), size - confirmable + half))
        self._tail = _tail_of(samples, x, keep)
        self._tail_start_ms = start_ms + (size - keep) * step_ms
        self._hz = hz
        since = (end_ms - self._last_qrs_ms) / 1000 if self._last_qrs_ms is not None else None
        return EcgFeatures(tuple(beats), self.hr, max_rr, since, False)

    def _accept(self, found: Iterable[tuple[int, float]], start_ms: float, step_ms: float) -> tuple[list[int],
                                                                                                 float | None]:
        """Beats among local maxima ``(index, deviation)`` in index order: not judged before, and
        outside the refractory period of the previous beat. Updates RR and amplitude history."""
        beats: list[int] = []
        max_rr: float | None = None
        for i, d in found:
            t = start_ms + i * step_ms
            if t <= self._until_ms:
                continue
            if self._last_qrs_ms is not None and t - self._last_qrs_ms < _REFRACTORY_S * 1000:
                continue
            if self._last_qrs_ms is not None:
                rr = (t - self._last_qrs_ms) / 1000
                self._rr_s.append(rr)
                max_rr = rr if max_rr is None else max(max_rr, rr)
            self._last_qrs_ms = t
            self._amplitudes.append(d)
            beats.append(round(t))
        return beats, max_rr

    @property
    def hr(self) -> float | None:
        if len(self._rr_s) < 2:
            return None
        return 60.0 / (sum(self._rr_s) / len(self._rr_s))

    def _reset_signal(self, hz: float) -> None:
        self._tail = np.empty(0)
        self._hz = hz
        self._last_qrs_ms = None  # after leads-off, asystole timing starts afresh


def feed_many(jobs: Sequence[tuple[EcgAnalyzer, int, float, npt.NDArray[np.floating[Any]]]]) -> list[EcgFeatures]:
    """``[analyzer.feed(ts, hz, samples) for analyzer, ts, hz, samples in jobs]``, the numpy work done
    for many chunks at once: what one chunk costs is mostly numpy's per-call overhead.

    Chunks of one analyzer are taken in the order given; chunks of different analyzers are
    independent, so the k-th chunk of every analyzer is handled in one pass (rows of equal length
    stacked into one array). Same floats, same beats as ``feed`` one by one (property-tested).
    """
    results: list[EcgFeatures | None] = [None] * len(jobs)
    rounds: list[list[int]] = []
    seen: dict[int, int] = {}
    for j, job in enumerate(jobs):
        k = seen.get(id(job[0]), 0)
        seen[id(job[0])] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(j)
    for round_ in rounds:
        groups: dict[tuple[float, int, int, np.dtype[Any]], list[tuple[int, bool]]] = {}
        for j in round_:
            analyzer, ts_ms, hz, samples = jobs[j]
            n = len(samples)
            tail = analyzer._tail
            contiguous = hz == analyzer._hz and abs(analyzer._tail_start_ms + len(tail) * (1000.0 / hz) - ts_ms) < (
                1000.0 / hz)
            size = len(tail) + n if contiguous else n
            groups.setdefault((hz, n, size, samples.dtype), []).append((j, contiguous))
        for (hz, n, size, _dtype), rows in groups.items():
            if len(rows) == 1 or n < 2:
                for j, _ in rows:
                    analyzer, ts_ms, hz_, samples = jobs[j]
                    results[j] = analyzer.feed(ts_ms, hz_, samples)
                continue
            _feed_rows(jobs, rows, hz, n, size, results)
    return [r for r in results if r is not None]


def _row_medians(x: FloatArray) -> FloatArray:
    """``np.median(x, axis=1)``: the same partition and mean of the middle two, so the same floats."""
    size = x.shape[1]
    half = size // 2
    if size % 2:
        part = np.partition(x, (half, -1), axis=1)
        out = part[:, half].copy()
    else:
        part = np.partition(x, (half - 1, half, -1), axis=1)
        out = (part[:, half - 1] + part[:, half]) / 2
    out[np.isnan(part[:, -1])] = np.nan
    return out


def _sliding_max(a: FloatArray, half: int) -> FloatArray:
    """Per row, the maximum of ``a[r, max(0, i - half) : i + half + 1]`` for every i (by doubling)."""
    rows, size = a.shape
    width = 2 * half + 1
    padded = np.full((rows, size + 2 * half), -np.inf)
    padded[:, half : half + size] = a
    span, out = 1, padded
    while span * 2 <= width:
        out = np.maximum(out[:, :-span], out[:, span:])  # now each covers 2 * span
        span *= 2
    if span < width:
        out = np.maximum(out[:, : size], out[:, width - span : width - span + size])
    return out[:, :size]


def _feed_rows(jobs: Sequence[tuple[EcgAnalyzer, int, float, npt.NDArray[np.floating[Any]]]],
               rows: list[tuple[int, bool]], hz: float, n: int, size: int, results: list[EcgFeatures | None]) -> None:
    """``feed`` of chunks of different analyzers with the same rate, length and ``x`` length."""
    m = len(rows)
    step_ms = 1000.0 / hz
    chunks = np.stack([jobs[j][3] for j, _ in rows])
    low = chunks.min(axis=1)
    high = chunks.max(axis=1)
    railed = np.count_nonzero((chunks == low[:, None]) | (chunks == high[:, None]), axis=1)
    flat = (high.astype(np.float64) - low.astype(np.float64) == 0) | (railed > 0.5 * n)
    starts = [jobs[j][0]._tail_start_ms if contiguous else float(jobs[j][1]) for j, contiguous in rows]
    if size == n:
        x = chunks.astype(np.float64)
    else:  # all contiguous, with tails of size - n samples
        x = np.concatenate((np.stack([jobs[j][0]._tail for j, _ in rows]), chunks), axis=1, dtype=np.float64)
    dev = np.abs(x - _row_medians(x)[:, None])
    dev_max = dev.max(axis=1).tolist()
    half = max(1, round(_NEIGHBOURHOOD_S * hz))
    confirmable = size - half
    thresholds = np.empty(m)
    for r, (j, _contiguous) in enumerate(rows):
        analyzer = jobs[j][0]
        recent = _median_of(analyzer._amplitudes) if analyzer._amplitudes else dev_max[r]
        thresholds[r] = max(MIN_QRS_MV, 0.5 * recent)
    # state-free tests first (as in ``feed``): over the threshold, the neighbourhood's maximum (the
    # neighbourhood cut at the edges of x), and not inside a plateau
    local = dev >= _sliding_max(dev, half)
    local[:, 1:] &= dev[:, 1:] != dev[:, :-1]
    local[:, confirmable:] = False
    local &= dev >= thresholds[:, None]
    cand_rows, cand_cols = np.nonzero(local)
    by_row: dict[int, list[tuple[int, float]]] = {}
    for r, i, d in zip(cand_rows.tolist(), cand_cols.tolist(), dev[cand_rows, cand_cols].tolist(), strict=True):
        by_row.setdefault(r, []).append((i, d))
    flat_rows = flat.tolist()
    tail_keep = min(size, max(round(_TAIL_S * hz), size - confirmable + half))
    for r, (j, contiguous) in enumerate(rows):
        analyzer, ts_ms, _hz, _samples = jobs[j]
        end_ms = ts_ms + n * step_ms
        if flat_rows[r]:
            analyzer._reset_signal(hz)
            results[j] = EcgFeatures((), analyzer.hr, None, None, True)
            continue
        start_ms = starts[r]
        if not contiguous:
            analyzer._until_ms = start_ms - step_ms
        beats, max_rr = analyzer._accept(by_row.get(r, ()), start_ms, step_ms)
        analyzer._until_ms = start_ms + (confirmable - 1) * step_ms
        analyzer._tail = _tail_of(jobs[j][3], x[r], tail_keep)
        analyzer._tail_start_ms = start_ms + (size - tail_keep) * step_ms
        analyzer._hz = hz
        since = (end_ms - analyzer._last_qrs_ms) / 1000 if analyzer._last_qrs_ms is not None else None
        results[j] = EcgFeatures(tuple(beats), analyzer.hr, max_rr, since, False)

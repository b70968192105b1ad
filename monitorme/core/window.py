"""Per-(patient, series) buffer of readings in event-time order, with bounded lateness and eviction."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class Series:
    """Time-ordered ``(ts_ms, value)`` pairs of one numeric series, kept for ``horizon_ms``.

    ``add`` places an out-of-order reading where it belongs as long as it is no older
    than ``lateness_ms`` behind the newest one; an older reading is refused (the caller
    stores it but it moves no window, and counts it). Lateness is judged against the
    series' own newest reading, never the wall clock (CONTRACT.md §2).

    The arrays grow by doubling and are compacted when the evicted prefix dominates,
    so appends are amortised O(1) and windows are contiguous numpy views.

    >>> s = Series(horizon_ms=10_000, lateness_ms=2_000)
    >>> [s.add(t, v) for t, v in [(1000, 1.0), (3000, 3.0), (2000, 2.0), (500, 9.0)]]
    [True, True, True, False]
    >>> s.window(3000, 1500)[1].tolist()
    [2.0, 3.0]
    """

    __slots__ = ("_end", "_start", "_ts", "_values", "horizon_ms", "lateness_ms", "memo")

    def __init__(self, horizon_ms: int, lateness_ms: int, capacity: int = 16) -> None:
        self.horizon_ms = horizon_ms
        self.lateness_ms = lateness_ms
        self._ts: IntArray = np.empty(capacity, dtype=np.int64)
        self._values: FloatArray = np.empty(capacity, dtype=np.float64)
        self._start = 0
        self._end = 0
        self.memo: dict[tuple[str, int], tuple[int, float]] = {}  # slow baselines, see features.py

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def newest_ts(self) -> int | None:
        return int(self._ts[self._end - 1]) if self._end > self._start else None

    @property
    def last(self) -> float | None:
        return float(self._values[self._end - 1]) if self._end > self._start else None

    def add(self, ts_ms: int, value: float) -> bool:
        """Insert a reading; False (and nothing changes) if it is later than the allowance."""
        start, end = self._start, self._end
        if end > start:
            newest = int(self._ts[end - 1])
            if ts_ms < newest - self.lateness_ms:
                return False
        else:
            newest = ts_ms
        if end == len(self._ts):
            self._make_room()
            start, end = self._start, self._end
        if ts_ms >= newest:
            self._ts[end] = ts_ms
            self._values[end] = value
        else:  # out of order, within the allowance: shift the (short) tail right by one
            at = start + int(np.searchsorted(self._ts[start:end], ts_ms, side="right"))
            self._ts[at + 1 : end + 1] = self._ts[at:end].copy()
            self._values[at + 1 : end + 1] = self._values[at:end].copy()
            self._ts[at] = ts_ms
            self._values[at] = value
        self._end = end + 1
        self._evict(max(newest, ts_ms) - self.horizon_ms)
        return True

    def _evict(self, before_ts: int) -> None:
        start, end = self._start, self._end
        if end > start and self._ts[start] < before_ts:
            self._start = start + int(np.searchsorted(self._ts[start:end], before_ts, side="left"))

    def _make_room(self) -> None:
        live = self._end - self._start
        # compacting frees enough when the evicted prefix is at least half; else grow
        size = len(self._ts) if self._start and live <= len(self._ts) // 2 else len(self._ts) * 2
        ts = np.empty(size, dtype=np.int64)
        values = np.empty(size, dtype=np.float64)
        ts[:live] = self._ts[self._start : self._end]
        values[:live] = self._values[self._start : self._end]
        self._ts, self._values, self._start, self._end = ts, values, 0, live

    def window(self, end_ts: int, span_ms: int) -> tuple[IntArray, FloatArray]:
        """Readings with ``end_ts - span_ms < ts <= end_ts`` as read-only views."""
        ts = self._ts[self._start : self._end]
        lo = int(np.searchsorted(ts, end_ts - span_ms, side="right"))
        hi = int(np.searchsorted(ts, end_ts, side="right"))
        return ts[lo:hi], self._values[self._start + lo : self._start + hi]

    def upto(self, end_ts: int) -> tuple[IntArray, FloatArray]:
        """All retained readings with ``ts <= end_ts``."""
        ts = self._ts[self._start : self._end]
        hi = int(np.searchsorted(ts, end_ts, side="right"))
        return ts[:hi], self._values[self._start : self._start + hi]

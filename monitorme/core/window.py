"""Per-(patient, series) buffer of readings in event-time order, with bounded lateness and eviction."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_COMPACT_SHARE = 16  # slide in place once the evicted prefix is >= 1/16 of the arrays


class Series:
    """Time-ordered ``(ts_ms, value)`` pairs of one numeric series, kept for ``horizon_ms``.

    ``add`` places an out-of-order reading where it belongs as long as it is no older
    than ``lateness_ms`` behind the newest one; an older reading is refused (the caller
    stores it but it moves no window, and counts it). Lateness is judged against the
    series' own newest reading, never the wall clock (CONTRACT.md §2).

    The arrays grow by doubling while the series fills; once it evicts, the live part slides
    to the front of the same arrays whenever the evicted prefix is at least 1/16 of them (else
    they grow by a quarter), so appends stay amortised O(1) (at most 15 element copies each),
    memory stops growing when the window is full, and windows are contiguous numpy views. A
    view is valid until the next ``add``/``extend``/``append_run`` (which may move the readings
    under it).

    >>> s = Series(horizon_ms=10_000, lateness_ms=2_000)
    >>> [s.add(t, v) for t, v in [(1000, 1.0), (3000, 3.0), (2000, 2.0), (500, 9.0)]]
    [True, True, True, False]
    >>> s.window(3000, 1500)[1].tolist()
    [2.0, 3.0]
    """

    __slots__ = ("_end", "_last", "_newest", "_oldest", "_start", "_ts", "_values", "horizon_ms", "lateness_ms",
                 "memo")

    def __init__(self, horizon_ms: int, lateness_ms: int, capacity: int = 16) -> None:
        self.horizon_ms = horizon_ms
        self.lateness_ms = lateness_ms
        self._ts: IntArray = np.empty(capacity, dtype=np.int64)
        self._values: FloatArray = np.empty(capacity, dtype=np.float64)
        self._start = 0
        self._end = 0
        # Python copies of the newest/oldest timestamps and the newest value: the per-reading path
        # then touches no numpy scalar (each costs more than the rest of an append)
        self._newest: int | None = None
        self._oldest = 0
        self._last = 0.0
        self.memo: dict[tuple[str, int], tuple[int, float]] = {}  # slow baselines, see features.py

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """Readings the arrays hold before they must move or grow (memory: 16 bytes each)."""
        return len(self._ts)

    @property
    def newest_ts(self) -> int | None:
        return self._newest

    @property
    def last(self) -> float | None:
        return self._last if self._newest is not None else None

    def add(self, ts_ms: int, value: float) -> bool:
        """Insert a reading; False (and nothing changes) if it is later than the allowance."""
        newest = self._newest
        if newest is None:
            newest = self._oldest = ts_ms
        elif ts_ms < newest - self.lateness_ms:
            return False
        end = self._end
        if end == len(self._ts):
            self._make_room()
            end = self._end
        if ts_ms >= newest:
            self._ts[end] = ts_ms
            self._values[end] = value
            self._newest = newest = ts_ms
            self._last = float(value)
        else:  # out of order, within the allowance: shift the (short) tail right by one
            start = self._start
            at = start + int(np.searchsorted(self._ts[start:end], ts_ms, side="right"))
            self._ts[at + 1 : end + 1] = self._ts[at:end].copy()
            self._values[at + 1 : end + 1] = self._values[at:end].copy()
            self._ts[at] = ts_ms
            self._values[at] = value
            if at == start:
                self._oldest = ts_ms
        self._end = end + 1
        if self._oldest < newest - self.horizon_ms:
            self._evict(newest - self.horizon_ms)
        return True

    def extend(self, ts: IntArray, values: FloatArray, evict: bool = True) -> None:
        """Append readings all in time order and no older than the newest: ``add`` of each, at once.

        With ``evict=False`` nothing leaves the window yet (so windows ending at the earlier of
        these readings still see what ``add`` would have shown them); ``evict_to_horizon`` then
        evicts what the sequence of ``add`` calls would have.
        """
        n = len(ts)
        if not n:
            return
        end = self._end
        if end + n > len(self._ts):
            self._make_room(n)
            end = self._end
        self._ts[end : end + n] = ts
        self._values[end : end + n] = values
        if self._newest is None:
            self._oldest = int(ts[0])
        self._newest = int(ts[-1])
        self._last = float(values[-1])
        self._end = end + n
        if evict:
            self.evict_to_horizon()

    def append_run(self, ts: IntArray, values: FloatArray, a: int, b: int, newest: int, last: float) -> None:
        """``extend(ts[a:b], values[a:b])`` given the run's newest timestamp and value as Python numbers."""
        n = b - a
        end = self._end
        if end + n > len(self._ts):
            self._make_room(n)
            end = self._end
        if n == 1:
            self._ts[end] = newest
            self._values[end] = last
        else:
            self._ts[end : end + n] = ts[a:b]
            self._values[end : end + n] = values[a:b]
        if self._newest is None:
            self._oldest = int(ts[a])
        self._newest = newest
        self._last = last
        self._end = end + n
        if self._oldest < newest - self.horizon_ms:
            self._evict(newest - self.horizon_ms)

    def evict_to_horizon(self) -> None:
        newest = self._newest
        if newest is not None and self._oldest < newest - self.horizon_ms:
            self._evict(newest - self.horizon_ms)

    def _evict(self, before_ts: int) -> None:
        start, end = self._start, self._end
        if end > start and self._oldest < before_ts:
            start += int(np.searchsorted(self._ts[start:end], before_ts, side="left"))
            self._start = start
            self._oldest = int(self._ts[start])  # never empty: the newest reading is inside the horizon

    def _make_room(self, more: int = 1) -> None:
        start = self._start
        live = self._end - start
        size = len(self._ts)
        if start and start * _COMPACT_SHARE >= size and live + more <= size:
            # a full window evicts as fast as it appends: slide it to the front of the same arrays.
            # Growing instead (heart rate: 3,601 readings in 30 min, arrays of 4,096) wrote a new
            # array page by page over the next half hour: RSS crept up long after the windows were
            # full (+39 MiB in the hour soak at 500 patients) and settled at twice the memory
            self._ts[:live] = self._ts[start : self._end]
            self._values[:live] = self._values[start : self._end]
            self._start, self._end = 0, live
            return
        if start:  # evicting, yet fuller than before (a faster device): grow by a quarter
            size = max(size + size // 4, (live + more) * 5 // 4)
        else:  # still filling: double
            while size < live + more:
                size *= 2
            if size == len(self._ts):
                size *= 2
        ts = np.empty(size, dtype=np.int64)
        values = np.empty(size, dtype=np.float64)
        ts[:live] = self._ts[start : self._end]
        values[:live] = self._values[start : self._end]
        self._ts, self._values, self._start, self._end = ts, values, 0, live

    def window(self, end_ts: int, span_ms: int) -> tuple[IntArray, FloatArray]:
        """Readings with ``end_ts - span_ms < ts <= end_ts`` as read-only views."""
        start, end = self._start, self._end
        ts = self._ts[start:end]
        lo = 0 if end_ts - span_ms < self._oldest else int(np.searchsorted(ts, end_ts - span_ms, side="right"))
        newest = self._newest
        hi = end - start if newest is not None and end_ts >= newest else int(np.searchsorted(ts, end_ts, side="right"))
        return ts[lo:hi], self._values[start + lo : start + hi]

    def since(self, after_ts: int) -> FloatArray:
        """The values of the readings with ``ts > after_ts``: ``window(end, end - after_ts)[1]`` for any
        ``end`` at or after the newest reading."""
        start, end = self._start, self._end
        if after_ts < self._oldest:
            return self._values[start:end]
        return self._values[start + int(np.searchsorted(self._ts[start:end], after_ts, side="right")) : end]

    def upto(self, end_ts: int) -> tuple[IntArray, FloatArray]:
        """All retained readings with ``ts <= end_ts``."""
        ts = self._ts[self._start : self._end]
        hi = int(np.searchsorted(ts, end_ts, side="right"))
        return ts[:hi], self._values[self._start : self._start + hi]


def median(values: FloatArray) -> float:
    """``float(np.median(values))`` of a non-empty 1-d array, without np.median's overhead (it is
    called per reading on small windows). Same partition and the same mean of the middle two, so the
    very same float; NaN when the array holds one, like numpy."""
    n = len(values)
    half = n // 2
    if n % 2:
        part = np.partition(values, (half, -1))
        mid = float(part[half])
    else:
        part = np.partition(values, (half - 1, half, -1))
        mid = (float(part[half - 1]) + float(part[half])) / 2
    return float("nan") if part[-1] != part[-1] else mid

"""The closed set of window operators rules may name, each computed from a ``Series`` at a time."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitorme.core.window import FloatArray, Series, median

_MIN_MS = 60_000


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Which operator, over which window: ``window_s`` of event time or the previous ``count`` readings."""

    op: str
    window_s: float = 0.0
    count: int = 0
    half_life_s: float = 60.0

    @property
    def window_ms(self) -> int:
        return round(self.window_s * 1000)


Operator = Callable[[Series, int, FeatureSpec], float | None]


def _last(s: Series, at: int, f: FeatureSpec) -> float | None:
    newest = s.newest_ts
    if newest is not None and at >= newest:  # the usual case: evaluating at the newest reading
        return s.last
    _ts, v = s.upto(at)
    return float(v[-1]) if len(v) else None


def _baseline_median(s: Series, at: int, f: FeatureSpec) -> tuple[float, float] | None:
    """(newest value, median of the window). A long window's median barely moves from one reading
    to the next, so it is recomputed at most every 1/60 of the window (30 s of a 30-min window)."""
    key = ("median", f.window_ms)
    cached = s.memo.get(key)
    newest = s.newest_ts
    if cached is not None and newest is not None and at >= newest and 0 <= at - cached[0] < f.window_ms // 60:
        last = s.last
        return (last, cached[1]) if last is not None else None
    _ts, v = s.window(at, f.window_ms)
    if not len(v):
        return None
    median_ = median(v)
    if newest is not None and at >= newest:
        s.memo[key] = (at, median_)
    return float(v[-1]), median_


def _over(fn: Callable[[FloatArray], np.floating[Any] | float]) -> Operator:
    def op(s: Series, at: int, f: FeatureSpec) -> float | None:
        _ts, v = s.window(at, f.window_ms) if f.window_ms else s.upto(at)
        return float(fn(v)) if len(v) else None

    return op


def _ewma(s: Series, at: int, f: FeatureSpec) -> float | None:
    ts, v = s.window(at, f.window_ms) if f.window_ms else s.upto(at)
    if not len(v):
        return None
    weights = np.exp2(-(at - ts) / (f.half_life_s * 1000))  # time-aware: irregular sampling is fine
    return float(np.dot(weights, v) / weights.sum())


def _slope(s: Series, at: int, f: FeatureSpec) -> float | None:
    """Least-squares slope in units per minute."""
    ts, v = s.window(at, f.window_ms)
    if len(v) < 2:
        return None
    t = (ts - ts[0]) / _MIN_MS
    tc = t - t.mean()
    denom = float(np.dot(tc, tc))
    if denom == 0:
        return None
    return float(np.dot(tc, v - v.mean()) / denom)


def _delta_from_median(s: Series, at: int, f: FeatureSpec) -> float | None:
    """Newest value minus the median of the window (the rolling baseline)."""
    pair = _baseline_median(s, at, f)
    return pair[0] - pair[1] if pair is not None else None


def _pct_from_median(s: Series, at: int, f: FeatureSpec) -> float | None:
    pair = _baseline_median(s, at, f)
    if pair is None:
        return None
    last, base = pair
    return (last - base) / base * 100 if base else None


def _pct_from_previous(s: Series, at: int, f: FeatureSpec) -> float | None:
    """Newest value vs the mean of the ``count`` readings before it, in percent."""
    _ts, v = s.upto(at)
    if len(v) < f.count + 1:
        return None
    base = float(v[-f.count - 1 : -1].mean())
    return (float(v[-1]) - base) / base * 100 if base else None


def _rise(s: Series, at: int, f: FeatureSpec) -> float | None:
    """Newest value minus the lowest in the window."""
    _ts, v = s.window(at, f.window_ms)
    return float(v[-1] - v.min()) if len(v) else None


def _count(s: Series, at: int, f: FeatureSpec) -> float | None:
    _ts, v = s.window(at, f.window_ms)
    return float(len(v))


OPERATORS: dict[str, Operator] = {
    "last": _last,
    "mean": _over(np.mean),
    "median": _over(median),
    "min": _over(np.min),
    "max": _over(np.max),
    "ewma": _ewma,
    "slope": _slope,
    "delta_from_median": _delta_from_median,
    "pct_from_median": _pct_from_median,
    "pct_from_previous": _pct_from_previous,
    "rise": _rise,
    "count": _count,
}
#: operators that need a time window (``window_s > 0``) or a ``count``
NEEDS_WINDOW = frozenset({"slope", "delta_from_median", "pct_from_median", "rise", "count"})
NEEDS_COUNT = frozenset({"pct_from_previous"})


def compute(series: Series, at_ts: int, feature: FeatureSpec) -> float | None:
    """The feature's value at event time ``at_ts``, or None when the window holds too little.

    >>> s = Series(horizon_ms=600_000, lateness_ms=10_000)
    >>> for i, v in enumerate([96, 97, 96, 91]): _ = s.add(i * 5000, v)
    >>> compute(s, 15_000, FeatureSpec("delta_from_median", window_s=600))
    -5.0
    """
    value = OPERATORS[feature.op](series, at_ts, feature)
    return value if value is None or math.isfinite(value) else None

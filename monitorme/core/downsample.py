"""Pick which points of a long series to show so that peaks survive (min/max per time bucket)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def minmax_indices(
    ts_ms: npt.NDArray[np.int64], values: npt.NDArray[np.float64], max_points: int
) -> npt.NDArray[np.intp]:
    """Indices of at most ``max_points`` points keeping each time bucket's min and max.

    The series is cut into ``max_points // 2`` equal time buckets; from each the
    lowest and highest point are kept (one point if they coincide), in time order.
    The global minimum and maximum are therefore always kept.

    Args:
        ts_ms: event times, ascending.
        values: the values to keep peaks of (NaN never wins).
        max_points: upper bound on the result's length (>= 1).

    >>> ts = np.arange(10, dtype=np.int64)
    >>> v = np.array([0, 5, 1, 1, 1, -3, 1, 1, 1, 2], dtype=np.float64)
    >>> minmax_indices(ts, v, 4).tolist()
    [0, 1, 5, 9]
    """
    n = len(ts_ms)
    if n <= max_points:
        return np.arange(n, dtype=np.intp)
    if max_points < 2:
        return np.array([int(np.nanargmax(values))], dtype=np.intp)
    buckets = max_points // 2
    span = int(ts_ms[-1] - ts_ms[0]) + 1
    bucket_of = ((ts_ms - ts_ms[0]) * buckets // span).astype(np.intp)
    starts = np.searchsorted(bucket_of, np.arange(buckets), side="left")
    ends = np.searchsorted(bucket_of, np.arange(buckets), side="right")
    keep: list[int] = []
    filled = np.where(np.isnan(values), np.nanmean(values) if np.isfinite(values).any() else 0, values)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if start == end:
            continue
        chunk = filled[start:end]
        lo = start + int(np.argmin(chunk))
        hi = start + int(np.argmax(chunk))
        keep.extend(sorted({lo, hi}))
    return np.asarray(keep, dtype=np.intp)


def change_points(labels: list[str], max_points: int) -> list[int]:
    """Indices where a categorical series changes (plus the first), thinned evenly if too many.

    >>> change_points(["awake", "awake", "asleep", "asleep", "awake"], 10)
    [0, 2, 4]
    """
    idx = [i for i, label in enumerate(labels) if i == 0 or label != labels[i - 1]]
    if len(idx) <= max_points:
        return idx
    step = len(idx) / max_points
    return [idx[int(k * step)] for k in range(max_points)]

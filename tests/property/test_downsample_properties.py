"""Downsampling keeps peaks: bounded size, a time-ordered subset, global min and max always kept."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from monitorme.core.downsample import change_points, minmax_indices

series = st.lists(
    st.tuples(st.integers(0, 10**6), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=400
).map(lambda pts: sorted(pts, key=lambda p: p[0]))


@given(points=series, max_points=st.integers(2, 500))
def test_minmax_keeps_peaks_within_budget(points: list[tuple[int, float]], max_points: int) -> None:
    ts = np.array([p[0] for p in points], dtype=np.int64)
    values = np.array([p[1] for p in points], dtype=np.float64)
    idx = minmax_indices(ts, values, max_points)
    assert len(idx) <= max_points
    assert list(idx) == sorted(set(idx.tolist()))  # strictly increasing: ordered, no repeats
    kept = values[idx]
    assert kept.max() == values.max()
    assert kept.min() == values.min()
    if len(points) <= max_points:
        assert len(idx) == len(points)


@given(labels=st.lists(st.sampled_from(["asleep", "awake"]), min_size=1, max_size=300), max_points=st.integers(1, 300))
def test_change_points_mark_every_change_when_they_fit(labels: list[str], max_points: int) -> None:
    idx = change_points(labels, max_points)
    changes = [i for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
    assert len(idx) <= max_points
    assert idx == sorted(set(idx))
    assert set(idx) <= set(changes)
    if len(changes) <= max_points:
        assert idx == changes

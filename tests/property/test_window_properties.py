"""Windows and operators against naive oracles recomputed from scratch on partly out-of-order streams."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitorme.core.features import OPERATORS, FeatureSpec, compute
from monitorme.core.window import Series

HORIZON = 120_000
LATENESS = 5_000


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[int, float]]:
    """Readings roughly 1 s apart, some arriving late (a few seconds, some beyond the allowance)."""
    n = draw(st.integers(1, 120))
    ts = 1_000_000
    out = []
    for _ in range(n):
        ts += draw(st.integers(0, 3_000))
        jitter = draw(st.one_of(st.just(0), st.integers(-8_000, 0)))
        value = draw(st.floats(-500, 500, allow_nan=False).map(lambda x: round(x, 3)))
        out.append((ts + jitter, value))
    return out


def oracle_accept(stream: list[tuple[int, float]]) -> list[tuple[int, float]]:
    accepted: list[tuple[int, float]] = []
    newest: int | None = None
    for ts, v in stream:
        if newest is not None and ts < newest - LATENESS:
            continue
        accepted.append((ts, v))
        newest = ts if newest is None else max(newest, ts)
    return sorted(accepted, key=lambda p: p[0])  # stable: ties keep arrival order


def oracle_window(accepted: list[tuple[int, float]], at: int, span_ms: int) -> list[tuple[int, float]]:
    newest = max(ts for ts, _ in accepted)
    kept = [(t, v) for t, v in accepted if t >= newest - HORIZON]
    if span_ms == 0:
        return [(t, v) for t, v in kept if t <= at]
    return [(t, v) for t, v in kept if at - span_ms < t <= at]


def oracle(op: str, accepted: list[tuple[int, float]], at: int, f: FeatureSpec) -> float | None:
    pts = oracle_window(accepted, at, f.window_ms if op not in ("last", "pct_from_previous") else 0)
    vals = [v for _, v in pts]
    if op == "count":
        return float(len(vals))
    if not vals:
        return None
    if op == "last":
        return vals[-1]
    if op == "mean":
        return statistics.fmean(vals)
    if op == "median":
        return statistics.median(vals)
    if op == "min":
        return min(vals)
    if op == "max":
        return max(vals)
    if op == "rise":
        return vals[-1] - min(vals)
    if op == "delta_from_median":
        return vals[-1] - statistics.median(vals)
    if op == "pct_from_median":
        base = statistics.median(vals)
        return (vals[-1] - base) / base * 100 if base else None
    if op == "pct_from_previous":
        if len(vals) < f.count + 1:
            return None
        base = statistics.fmean(vals[-f.count - 1 : -1])
        return (vals[-1] - base) / base * 100 if base else None
    if op == "ewma":
        w = [2 ** (-(at - t) / (f.half_life_s * 1000)) for t, _ in pts]
        return sum(wi * v for wi, (_, v) in zip(w, pts, strict=True)) / sum(w)
    if op == "slope":
        if len(pts) < 2:
            return None
        t = [(ti - pts[0][0]) / 60_000 for ti, _ in pts]
        tm, vm = statistics.fmean(t), statistics.fmean(vals)
        den = sum((ti - tm) ** 2 for ti in t)
        return sum((ti - tm) * (v - vm) for ti, v in zip(t, vals, strict=True)) / den if den else None
    raise AssertionError(op)


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-6)


@given(stream=streams())
def test_series_accepts_exactly_what_lateness_allows_and_keeps_order(stream: list[tuple[int, float]]) -> None:
    s = Series(HORIZON, LATENESS, capacity=4)
    verdicts = [s.add(ts, v) for ts, v in stream]
    accepted = oracle_accept(stream)
    assert sum(verdicts) == len(accepted)
    newest = max(ts for ts, _ in accepted)
    ts_arr, v_arr = s.upto(newest)
    expected = [(t, v) for t, v in accepted if t >= newest - HORIZON]
    assert list(zip(ts_arr.tolist(), v_arr.tolist(), strict=True)) == expected
    assert len(s) == len(expected)  # eviction keeps the time bound


@settings(max_examples=40)
@given(period_ms=st.integers(50, 3_000), horizons=st.integers(3, 6), late_every=st.integers(0, 7),
       seed_value=st.floats(0, 200, allow_nan=False))
def test_a_full_window_stops_growing_and_keeps_its_readings(period_ms: int, horizons: int, late_every: int,
                                                            seed_value: float) -> None:
    """Once the horizon is full the arrays neither grow nor get replaced (their memory is written
    once and reused: no RSS creeping up after the fill), capacity stays within twice the most
    readings ever live, and what the window holds is still exactly the oracle's."""
    s = Series(HORIZON, LATENESS)
    accepted: list[tuple[int, float]] = []
    peak = 0
    settled: tuple[int, int] | None = None  # (id of the arrays, capacity) once the first horizon has passed
    ts = 1_000_000
    for i in range(horizons * HORIZON // period_ms):
        ts += period_ms
        at = ts - LATENESS // 2 if late_every and i % (late_every + 1) == late_every else ts  # within allowance
        value = round(seed_value + i % 17, 3)
        assert s.add(at, value)
        accepted.append((at, value))
        peak = max(peak, len(s))
        if ts - 1_000_000 >= 2 * HORIZON:
            if settled is None:
                settled = (id(s._ts), s.capacity)
            assert (id(s._ts), s.capacity) == settled
    assert s.capacity <= max(16, 2 * peak)
    accepted.sort(key=lambda p: p[0])
    newest = max(t for t, _ in accepted)
    ts_arr, v_arr = s.upto(newest)
    assert list(zip(ts_arr.tolist(), v_arr.tolist(), strict=True)) == [
        (t, v) for t, v in accepted if t >= newest - HORIZON]


@pytest.mark.parametrize("op", sorted(OPERATORS))
@settings(max_examples=60)
@given(stream=streams(), window_s=st.sampled_from([5, 30, 60, 120]), count=st.integers(1, 5),
       back=st.integers(0, 20_000))
def test_operator_matches_naive_oracle(op: str, stream: list[tuple[int, float]], window_s: int, count: int,
                                       back: int) -> None:
    s = Series(HORIZON, LATENESS)
    for ts, v in stream:
        s.add(ts, v)
    accepted = oracle_accept(stream)
    at = max(ts for ts, _ in accepted) - back
    f = FeatureSpec(op, window_s=window_s, count=count, half_life_s=30)
    assert close(compute(s, at, f), oracle(op, accepted, at, f))

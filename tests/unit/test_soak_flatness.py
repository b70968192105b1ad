"""bench.soak's flatness criterion on synthetic series: noise and spikes pass, growth (a leak) fails.

The soak itself cannot be made to leak (the daemon is a separate, unmodified process), so the
criterion that judges it is a pure function and is proven here both ways.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from bench.soak import flatness, judge, quarters


def test_quarters_cover_the_series_in_order() -> None:
    for n in range(4, 40):
        q = quarters(list(range(n)))
        assert [x for part in q for x in part] == list(range(n))
        assert all(part for part in q)
        assert max(map(len, q)) - min(map(len, q)) <= 1


def test_too_few_samples_is_unknown_not_flat() -> None:
    assert flatness([100.0, 101.0, 102.0])["flat"] is None
    assert flatness([100.0, None, 101.0, None, 102.0])["flat"] is None  # None = no measurement that interval


@given(base=st.floats(20.0, 500.0), n=st.integers(16, 120), noise=st.floats(0.0, 0.04),
       spikes=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_flat_noisy_series_with_spikes_passes(base: float, n: int, noise: float, spikes: int, seed: int) -> None:
    """±4 % noise on every sample and a few intervals slowed 1.5-4x by somebody else's job: flat."""
    rng = random.Random(seed)
    values = [base * (1 + rng.uniform(-noise, noise)) for _ in range(n)]
    for part in quarters(list(range(n))):  # at most one spike per quarter: a median ignores it
        for i in rng.sample(part, min(1, spikes)):
            values[i] *= rng.uniform(1.5, 4.0)
    assert flatness(values)["flat"] is True


@given(base=st.floats(20.0, 500.0), n=st.integers(8, 120), total_growth=st.floats(0.5, 5.0),
       noise=st.floats(0.0, 0.02), seed=st.integers(0, 2**32 - 1))
def test_linearly_growing_series_fails(base: float, n: int, total_growth: float, noise: float, seed: int) -> None:
    """A leak: +50 % or more over the run (≈ +20 % between the quarters' midpoints) is never flat."""
    rng = random.Random(seed)
    values = [base * (1 + total_growth * i / (n - 1)) * (1 + rng.uniform(-noise, noise)) for i in range(n)]
    result = flatness(values)
    assert result["flat"] is False
    assert result["change"] > 0.10


def test_an_unbounded_list_per_reading_is_caught() -> None:
    """500 patients (≈ 2,110 readings/s), 60 s samples, 80 MiB baseline, 100 bytes kept per reading."""
    rss = [80 + 100 * 2_110 * 60 * (i + 1) / 2**20 for i in range(58)]  # MiB after each interval
    assert flatness(rss)["flat"] is False
    steady = [80 + 0.5 * random.Random(i).random() for i in range(58)]
    assert flatness(steady)["flat"] is True


def test_latency_slack_absorbs_one_histogram_bucket() -> None:
    p99 = [20.0] * 8 + [24.5] * 8  # +22 % but under 5 ms: the 5 ms buckets cannot tell it apart
    assert flatness(p99, slack=5.0)["flat"] is True
    assert flatness(p99)["flat"] is False
    assert flatness([20.0] * 8 + [30.0] * 8, slack=5.0)["flat"] is False


def _sample(i: int, rss: float, p99: float, pending: int = 0, spool: int = 0, filling: bool = False,
            ) -> dict[str, object]:
    lat = {"p50": p99 / 2, "p99": p99, "max": p99, "n": 100}
    return {"index": i, "warmup": i < 2, "filling": filling, "rss_mb": rss,
            "stored_ms": lat, "station_ms": lat, "alert_ms": lat,
            "cpu_share": 0.3, "readings_per_s": 2110.0, "pending_rows": pending, "spool_batches": spool,
            "spool_bytes": 0, "readings_total": 2110 * 60 * (i + 1)}


def test_judge_excludes_the_warm_up_and_checks_the_backlog() -> None:
    # the warm-up intervals (huge RSS jump, slow start) do not count
    samples = [_sample(i, 50.0 if i < 2 else 100.0, 500.0 if i < 2 else 30.0) for i in range(14)]
    assert judge(samples, 500)["verdict"] == {"flat": True, "reasons": []}
    growing = [_sample(i, 100.0 + 5 * i, 30.0) for i in range(14)]
    verdict = judge(growing, 500)["verdict"]
    assert verdict["flat"] is False
    assert any(r.startswith("rss_mb") for r in verdict["reasons"])
    backlog = [_sample(i, 100.0, 30.0, pending=5_000 if i == 9 else 0) for i in range(14)]
    assert judge(backlog, 500)["verdict"]["flat"] is False
    spooled = [_sample(i, 100.0, 30.0, spool=1 if i == 5 else 0) for i in range(14)]
    assert judge(spooled, 500)["backlog"]["ok"] is False


def test_rss_is_judged_after_the_windows_are_full() -> None:
    """An hour: RSS climbs for 30 min while the windows fill (by design), then stays; flat. A leak after
    the fill is still caught, and a run too short to have 8 filled samples is judged on all of them."""
    def hour(after_fill: float) -> list[dict[str, object]]:
        return [_sample(i, 100.0 + 5 * min(i, 30) + after_fill * max(0, i - 30), 30.0, filling=i < 30)
                for i in range(60)]
    steady = judge(hour(0.0), 500)
    assert steady["verdict"]["flat"] is True
    assert steady["flatness"]["rss_mb"]["judged_from"] == "window_fill"
    leaking = judge(hour(2.0), 500)  # +2 MiB a minute after the fill: +24 % over the half hour
    assert leaking["verdict"]["flat"] is False
    assert any(r.startswith("rss_mb") for r in leaking["verdict"]["reasons"])
    short = [_sample(i, 100.0 + 5 * i, 30.0, filling=True) for i in range(14)]
    assert judge(short, 500)["flatness"]["rss_mb"]["judged_from"] == "warmup"
    assert judge(short, 500)["verdict"]["flat"] is False

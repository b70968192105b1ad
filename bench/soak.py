"""Soak: one ward daemon under hospital load for a long time; do memory and latency stay flat?

    python -m bench.soak --patients 500 --minutes 60 [--interval 60] [--warmup-intervals 2]
                         [--json bench/results/soak.json] [--plot [bench/plots/soak.png]]

One private Mosquitto (``MosquittoBroker``: the no-loss configuration), one fresh database on
127.0.0.1:5432 (else an embedded pgserver; created here and dropped at the end) and one
``python -m monitorme run --insecure-no-auth`` process. ``bench.loadgen.LoadGenerator`` publishes
the ward from separate processes at the CONTRACT.md device periods (speed 1, ``ts`` = publish time);
``bench.alert_latency.Probe`` runs for the whole soak (50 extra patients, a breaching glucose
reading every 2 s each). Every ``interval`` seconds one sample is taken:

* ``rss_mb``: the daemon's current resident set (``VmRSS`` in /proc/PID/status), MiB;
* ``stored_ms``: publish -> stored p50/p99 over the interval, the difference of two scrapes of the
  daemon's ``monitorme_store_lag_seconds`` histogram (interpolated within its 5 ms buckets);
* ``station_ms``: publish -> station WebSocket p99 from a burst of ``bench.suite.station_probe``
  inside the interval (stations of 20 patients, one screen each, a probe patient per station at
  5 Hz; the screens are opened and closed again in every burst);
* ``alert_ms``: breaching reading -> alert received on MQTT, p99 of the alerts of the interval;
* ``cpu_share`` (daemon user+sys CPU / wall, 1.0 = one core), ``readings_per_s`` and
  ``stored_per_s`` (``monitorme_readings_total`` / ``monitorme_stored_total`` over the interval),
  and the writer's gauges at the end of it: ``pending_rows``, ``spool_batches``, ``spool_bytes``.

The first ``--warmup-intervals`` samples (2) are excluded from the verdict. The criterion
(``flatness``, a pure function, unit-tested in tests/unit/test_soak_flatness.py) splits the
remaining samples into four quarters in time order and compares the MEDIAN of the last quarter
with the MEDIAN of the second: flat when ``|last - second| <= 10 % * second + slack``. The slack is
the measurement's resolution: 0 for RSS, 5 ms (one histogram bucket) for the latencies. The second
quarter, not the first, is the baseline because the first still holds start-up transients; medians
of quarters, not single intervals, because one interval on a shared 2-core machine can be slowed by
somebody else's job. Verdict = RSS, stored p99, station p99 and alert p99 all flat, and the writer
kept up (after the warm-up the pending rows never exceeded one second of the ward's readings and
the spool stayed empty). Exit code 0 flat, 1 not flat (or the daemon did not exit 0), 2 when the
measurement failed, 130 when interrupted. Everything started is stopped and the database dropped on
success, failure, Ctrl-C and SIGTERM.

By design the daemon's memory grows until its longest high-rate window is full: heart rate (2 Hz)
keeps 30 minutes for ``hr_rising`` (``pct_from_median``, window_s 1800), so at 500 patients RSS
climbs through the first half hour. ``window_fill_s`` in the report says when that is; samples
before it are flagged, RSS is judged on the samples after it (when there are at least 8), and a run
shorter than that measures filling, not a leak. The latencies are judged on every sample after the
warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

from bench import ingest
from bench.alert_latency import Probe, percentile
from bench.ingest import REPO, BenchError, _admin_dsn, _cpu_s, _Daemon, _execute, _say
from bench.loadgen import MSG_PER_PATIENT_S, LoadGenerator
from bench.suite import histogram_summary, scrape_histogram, station_probe
from monitorme.demo.services import MosquittoBroker, free_port, with_database

RESULTS: Final = REPO / "bench" / "results"
PLOT: Final = REPO / "bench" / "plots" / "soak.png"
TOLERANCE: Final = 0.10
LATENCY_SLACK_MS: Final = 5.0  # one bucket of monitorme_store_lag_seconds below 100 ms
BACKLOG_SECONDS: Final = 1.0  # pending rows allowed: this many seconds of the ward's readings
MIN_FILLED_SAMPLES: Final = 8  # RSS is judged after the windows are full when this many samples are

SCHEMA: Final = (
    "bench/soak.py results: one ward daemon under live hospital load for a long time. "
    "date (UTC, end of run), machine (nproc, cpu model, versions), source (git commit, modified files). "
    "params: patients (loadgen, speed 1 = CONTRACT.md periods), minutes, interval_s, warmup_intervals, "
    "station_burst_s (length of the station probe burst inside each interval). "
    "expected_msg_per_s: what the load generator's schedule asks for (the 50 alert-probe patients add "
    "about 50 msg/s and the station probe 5 msg/s per station during its burst). "
    "window_fill_s: when the daemon's longest window of a high-rate channel is full (heart rate, 30 min); "
    "memory is expected to grow until then. "
    "samples: one per interval, in order: index, t_end_s (seconds since the load started), seconds (wall "
    "length of the interval), warmup (excluded from the verdict), filling (before window_fill_s), rss_mb "
    "(VmRSS at the end, MiB), hwm_mb (VmHWM, MiB), stored_ms {p50, p99, max, n} (publish -> committed, "
    "from the difference of two scrapes of the daemon's monitorme_store_lag_seconds histogram, "
    "interpolated within its buckets; max = upper bound of the highest non-empty bucket), station_ms "
    "{p50, p99, max, n} (publish -> station WebSocket frame, bench.suite.station_probe burst), alert_ms "
    "{p50, p99, max, n} (breaching glucose reading -> raised alert received on MQTT, bench.alert_latency "
    "Probe running throughout), cpu_share (daemon user+sys CPU / wall; 1.0 = one core), readings_per_s "
    "(monitorme_readings_total over the interval), stored_per_s (monitorme_stored_total), pending_rows, "
    "spool_batches, spool_bytes (the writer's gauges at the end of the interval). "
    "flatness.<series>: the criterion on the samples after the warm-up: values split into 4 quarters in "
    "time order; second = median of the 2nd quarter, last = median of the 4th; change = last/second - 1; "
    "flat = |last - second| <= tolerance * |second| + slack (tolerance 0.10; slack 0 for rss_mb, 5 ms for "
    "the latencies); flat is null with fewer than 4 samples. rss_mb is judged on the samples after "
    "window_fill_s when there are at least 8 of them (judged_from: window_fill), else on all after the "
    "warm-up (judged_from: warmup; such a run measures the filling). cpu_share and readings_per_s are reported, "
    "not judged. backlog: max pending_rows and spool after the warm-up against the limit (one second of "
    "the ward's readings, empty spool). rss_growth_bytes_per_reading: (last - second) RSS medians over the "
    "readings accepted between the two quarters' midpoints. verdict: flat (all four series flat and the "
    "backlog within its limit), reasons when not. generator: LoadGenerator.stop()'s totals. "
    "daemon_exit_code: after SIGTERM (0 expected). problems: anything that went wrong."
)


class SoakError(BenchError):
    """The soak could not be measured (daemon died, /metrics unreachable, no samples)."""


# -- the criterion ------------------------------------------------------------------------------------------
def quarters(values: Sequence[float]) -> list[list[float]]:
    """Split into four consecutive parts as equal as possible (the earlier parts get the extra ones)."""
    n = len(values)
    bounds = [round(i * n / 4) for i in range(5)]
    return [list(values[bounds[i]:bounds[i + 1]]) for i in range(4)]


def flatness(values: Sequence[float | None], *, tolerance: float = TOLERANCE, slack: float = 0.0) -> dict[str, Any]:
    """Is a series flat? Median of its last quarter against the median of its second quarter.

    ``values`` are the samples after the warm-up, in time order; ``None`` (no measurement in that
    interval) is skipped. Flat when ``|last - second| <= tolerance * |second| + slack``; ``flat`` is
    None when fewer than 4 values remain (a quarter would be empty).

    >>> flatness([100, 101, 99, 100, 102, 100, 98, 101])["flat"]
    True
    >>> flatness([100, 110, 120, 130, 140, 150, 160, 170])["flat"]
    False
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if len(xs) < 4:
        return {"flat": None, "n": len(xs), "second": None, "last": None, "change": None,
                "reason": f"{len(xs)} samples; at least 4 needed"}
    q = quarters(xs)
    second, last = statistics.median(q[1]), statistics.median(q[3])
    change = last / second - 1 if second else (0.0 if last == second else math.inf)
    flat = abs(last - second) <= tolerance * abs(second) + slack
    return {"flat": flat, "n": len(xs), "second": round(second, 2), "last": round(last, 2),
            "change": round(change, 4) if math.isfinite(change) else None, "tolerance": tolerance, "slack": slack}


# -- sampling -----------------------------------------------------------------------------------------------
def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise SoakError(f"no {field} in /proc/{pid}/status")


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: float  # monotonic
    cpu_s: float
    bounds: list[float]
    lag_counts: list[int]
    metrics: dict[str, float]
    rss_kib: int
    hwm_kib: int
    alerts_seen: int


def _snapshot(daemon: _Daemon, probe: Probe) -> _Snapshot:
    if daemon.proc.poll() is not None:
        raise SoakError(f"the daemon exited with {daemon.proc.returncode} during the soak; log tail:\n"
                        + daemon.log_tail()[-2000:])
    bounds, counts = scrape_histogram(daemon.http_port)
    metrics = daemon.metrics()
    with probe.lock:
        alerts = len(probe.latency_ms)
    pid = daemon.proc.pid
    return _Snapshot(time.monotonic(), _cpu_s(daemon.ps), bounds, counts, metrics, _status_kib(pid, "VmRSS"),
                     _status_kib(pid, "VmHWM"), alerts)


def _timed(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {"p50": round(percentile(values, 50), 1), "p99": round(percentile(values, 99), 1),
            "max": round(max(values), 1), "n": len(values)}


def _sample(index: int, t0: float, a: _Snapshot, b: _Snapshot, station_ms: list[float], probe: Probe,
            warmup_intervals: int, fill_s: float) -> dict[str, Any]:
    wall = b.at - a.at
    with probe.lock:
        alerts = list(probe.latency_ms[a.alerts_seen:b.alerts_seen])

    def rate(name: str) -> float:
        return round((b.metrics.get(name, 0.0) - a.metrics.get(name, 0.0)) / wall, 1)

    t_end = b.at - t0
    return {
        "index": index, "t_end_s": round(t_end, 1), "seconds": round(wall, 2),
        "warmup": index < warmup_intervals, "filling": t_end < fill_s,
        "rss_mb": round(b.rss_kib / 1024, 1), "hwm_mb": round(b.hwm_kib / 1024, 1),
        "stored_ms": histogram_summary(a.bounds, a.lag_counts, b.lag_counts),
        "station_ms": _timed(station_ms), "alert_ms": _timed(alerts),
        "cpu_share": round((b.cpu_s - a.cpu_s) / wall, 3),
        "readings_per_s": rate("monitorme_readings_total"), "stored_per_s": rate("monitorme_stored_total"),
        "pending_rows": int(b.metrics.get("monitorme_writer_pending_rows", 0)),
        "spool_batches": int(b.metrics.get("monitorme_spool_batches", 0)),
        "spool_bytes": int(b.metrics.get("monitorme_spool_bytes", 0)),
        "readings_total": int(b.metrics.get("monitorme_readings_total", 0)),
    }


def window_fill_s() -> float:
    """Seconds until the longest window of a channel reporting at least once a minute is full."""
    from monitorme.config import load_pipelines, load_rules

    registry = load_pipelines()
    rules = load_rules(registry)
    longest = 0
    for vital, channel in {(r.vital, r.channel) for r in rules.rules}:
        spec = registry.get(vital)
        if spec is not None and spec.period_s <= 60:
            longest = max(longest, rules.horizon_ms(vital, channel))
    return longest / 1000


def judge(samples: Sequence[dict[str, Any]], patients: int) -> dict[str, Any]:
    """Flatness of each series after the warm-up, the backlog, and the verdict."""
    kept = [s for s in samples if not s["warmup"]]
    # Memory grows by design until the longest window is full; a leak is growth after that. Judge
    # RSS on the filled samples when there are enough of them to make four quarters worth comparing.
    filled = [s for s in kept if not s.get("filling", False)]
    rss_samples, rss_from = (filled, "window_fill") if len(filled) >= MIN_FILLED_SAMPLES else (kept, "warmup")
    series: dict[str, tuple[list[float | None], float]] = {
        "rss_mb": ([s["rss_mb"] for s in rss_samples], 0.0),
        "stored_p99_ms": ([s["stored_ms"]["p99"] for s in kept], LATENCY_SLACK_MS),
        "station_p99_ms": ([s["station_ms"]["p99"] for s in kept], LATENCY_SLACK_MS),
        "alert_p99_ms": ([s["alert_ms"]["p99"] for s in kept], LATENCY_SLACK_MS),
    }
    flat = {name: flatness(values, slack=slack) for name, (values, slack) in series.items()}
    flat["rss_mb"]["judged_from"] = rss_from
    info = {name: flatness([s[name] for s in kept]) for name in ("cpu_share", "readings_per_s")}
    limit = round(BACKLOG_SECONDS * patients * MSG_PER_PATIENT_S)
    backlog = {"max_pending_rows": max((s["pending_rows"] for s in kept), default=None),
               "max_spool_batches": max((s["spool_batches"] for s in kept), default=None),
               "max_spool_bytes": max((s["spool_bytes"] for s in kept), default=None),
               "pending_rows_limit": limit}
    backlog["ok"] = bool(kept) and backlog["max_pending_rows"] <= limit and backlog["max_spool_batches"] == 0
    growth = None
    if len(rss_samples) >= 4:
        q = quarters(list(range(len(rss_samples))))
        mid2, mid4 = rss_samples[q[1][len(q[1]) // 2]], rss_samples[q[3][len(q[3]) // 2]]
        readings = mid4["readings_total"] - mid2["readings_total"]
        if readings > 0 and flat["rss_mb"]["second"] is not None:
            growth = round((flat["rss_mb"]["last"] - flat["rss_mb"]["second"]) * 2**20 / readings, 1)
    reasons = [f"{name} not flat: {r['second']} -> {r['last']} ({100 * (r['change'] or 0):+.1f} %)"
               for name, r in flat.items() if r["flat"] is False]
    reasons += [f"{name}: {r['reason']}" for name, r in flat.items() if r["flat"] is None]
    if not backlog["ok"]:
        reasons.append(f"backlog: up to {backlog['max_pending_rows']} pending rows (limit {limit}), "
                       f"{backlog['max_spool_batches']} spooled batches")
    return {"flatness": flat, "informational": info, "backlog": backlog, "rss_growth_bytes_per_reading": growth,
            "verdict": {"flat": not reasons, "reasons": reasons}}


# -- the run ---------------------------------------------------------------------------------------------
def _default_burst(interval: float) -> float:
    return max(4.0, min(20.0, 0.4 * interval))


@contextlib.contextmanager
def _database() -> Iterator[str]:
    with _admin_dsn() as admin:
        name = f"monitorme_soak_{secrets.token_hex(4)}"
        asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
        try:
            yield with_database(admin, name)
        finally:
            asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_soak(patients: int, minutes: float, interval: float, *, warmup_intervals: int = 2,
             station_burst_s: float | None = None, result: dict[str, Any] | None = None,
             on_sample: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the soak; ``result`` (also returned) is filled as it goes, so a failure keeps what was measured.

    Raises SoakError (or BenchError) when the measurement fails; the daemon, load generator,
    probes, broker and database are stopped or dropped whatever happens.
    """
    if patients < 1 or minutes <= 0 or interval <= 0 or warmup_intervals < 0:
        raise ValueError("patients, minutes and interval must be positive, warmup_intervals >= 0")
    burst = station_burst_s if station_burst_s is not None else _default_burst(interval)
    intervals = max(1, round(minutes * 60 / interval))
    fill = window_fill_s()
    r = result if result is not None else {}
    r.update({"schema": SCHEMA, "params": {"patients": patients, "minutes": minutes, "interval_s": interval,
                                           "warmup_intervals": warmup_intervals, "station_burst_s": burst,
                                           "intervals": intervals},
              "expected_msg_per_s": round(patients * MSG_PER_PATIENT_S, 1), "window_fill_s": fill,
              "samples": [], "problems": []})
    samples: list[dict[str, Any]] = r["samples"]
    ward = f"soak{patients}-{secrets.token_hex(2)}"
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(MosquittoBroker())
        dsn = stack.enter_context(_database())
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
        env.update(MONITORME_MQTT_URL=broker.url, MONITORME_DATABASE_URL=dsn, MONITORME_WARD=ward,
                   MONITORME_HTTP=f"127.0.0.1:{port}", MONITORME_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
        daemon = _Daemon(env, port)

        def stop_daemon() -> None:
            r["daemon_exit_code"] = code = daemon.stop()
            if daemon.proc.stdout is not None:
                daemon.proc.stdout.close()  # _Daemon leaves its log pipe open
            if code != 0:
                r["problems"].append(f"daemon exited with {code} after SIGTERM: {daemon.log_tail()[-1500:]}")

        stack.callback(stop_daemon)
        daemon.wait_event("mqtt_connected", 60)
        load = LoadGenerator(broker.url, ward, patients)
        stack.callback(lambda: r.__setitem__("generator", load.stop()))
        load.start()
        probe = Probe(broker.port, ward)
        stack.callback(probe.close)
        stop = threading.Event()
        alerts = threading.Thread(target=probe.run, args=(minutes * 60 + 3600, stop), name="soak.alerts", daemon=True)
        alerts.start()
        stack.callback(lambda: (stop.set(), alerts.join(5)))
        t0 = time.monotonic()
        prev = _snapshot(daemon, probe)
        _say(f"soak: {patients} patients ({patients * MSG_PER_PATIENT_S:,.0f} msg/s), {intervals} x {interval:g} s, "
             f"ward {ward}, daemon pid {daemon.proc.pid}, windows full after {fill / 60:.0f} min")
        for i in range(intervals):
            if ingest._STOP.is_set():
                raise KeyboardInterrupt
            deadline = t0 + (i + 1) * interval
            station_ms = asyncio.run(station_probe(f"http://127.0.0.1:{port}", broker.port, ward, patients,
                                                   max(1.0, min(burst, deadline - time.monotonic() - 3.0))))
            time.sleep(max(0.0, deadline - time.monotonic()))
            cur = _snapshot(daemon, probe)
            sample = _sample(i, t0, prev, cur, station_ms, probe, warmup_intervals, fill)
            samples.append(sample)
            if on_sample is not None:
                on_sample(sample)
            prev = cur
        stop.set()
        # Drained: once the load stops the writer must empty its queue, the spool must be empty.
        r["generator"] = load.stop()
        deadline = time.monotonic() + 20
        while True:
            m = daemon.metrics()
            if m.get("monitorme_writer_pending_rows", 0) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        r["drained"] = {"pending_rows": int(m.get("monitorme_writer_pending_rows", 0)),
                        "spool_batches": int(m.get("monitorme_spool_batches", 0)),
                        "readings_total": int(m.get("monitorme_readings_total", 0)),
                        "stored_total": int(m.get("monitorme_stored_total", 0)),
                        "mqtt_received_total": int(m.get("monitorme_mqtt_received_total", 0))}
        r["daemon_warnings"] = daemon.warnings[-20:]
    if r["generator"].get("errors"):
        r["problems"].extend(r["generator"]["errors"])
    if not samples:
        raise SoakError("no samples")
    r.update(judge(samples, patients))
    if r.get("daemon_exit_code") != 0:
        r["verdict"]["flat"] = False
        r["verdict"]["reasons"].append(f"daemon exit code {r.get('daemon_exit_code')}")
    r["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    with contextlib.suppress(Exception):
        r["machine"] = {"nproc": os.cpu_count(), "cpu": ingest._cpu_model(), "python": sys.version.split()[0],
                        "mosquitto": ingest._mosquitto_version(), **ingest._versions()}
        r["source"] = ingest._source_tree()
    return r


# -- output -------------------------------------------------------------------------------------------------
def _f(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


HEADER: Final = (f"{'#':>3} {'t min':>6} {'RSS MiB':>8} {'stored p50':>10} {'p99':>6} {'station p99':>11} "
                 f"{'alert p99':>9} {'CPU':>5} {'rd/s':>7} {'pending':>7} {'spool':>5}")


def format_row(s: dict[str, Any]) -> str:
    mark = "w" if s["warmup"] else ("f" if s["filling"] else " ")
    return (f"{s['index']:>3}{mark}{s['t_end_s'] / 60:>6.1f} {s['rss_mb']:>8.1f} {_f(s['stored_ms']['p50']):>10} "
            f"{_f(s['stored_ms']['p99']):>6} {_f(s['station_ms']['p99']):>11} {_f(s['alert_ms']['p99']):>9} "
            f"{s['cpu_share']:>5.2f} {s['readings_per_s']:>7.0f} {s['pending_rows']:>7} {s['spool_batches']:>5}")


def format_table(r: dict[str, Any]) -> str:
    lines = [HEADER, *(format_row(s) for s in r["samples"]),
             "(w = warm-up, excluded; f = before the windows are full; latencies in ms, CPU in cores)", ""]
    for name, f in r.get("flatness", {}).items():
        state = {True: "flat", False: "NOT FLAT", None: "unknown"}[f["flat"]]
        change = "" if f["change"] is None else f" ({100 * f['change']:+.1f} %)"
        lines.append(f"{name:>15}: 2nd-quarter median {_f(f['second'])} -> last-quarter median {_f(f['last'])}"
                     f"{change}: {state}")
    if "backlog" in r:
        b = r["backlog"]
        lines.append(f"{'backlog':>15}: max pending rows {b['max_pending_rows']} (limit {b['pending_rows_limit']}), "
                     f"max spool batches {b['max_spool_batches']}: {'ok' if b['ok'] else 'NOT OK'}")
        lines.append(f"{'RSS growth':>15}: {_f(r.get('rss_growth_bytes_per_reading'))} bytes per reading accepted")
    if "verdict" in r:
        v = r["verdict"]
        lines.append("verdict: " + ("FLAT" if v["flat"] else "NOT FLAT: " + "; ".join(v["reasons"])))
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = r["samples"]
    t = [s["t_end_s"] / 60 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    ax1.plot(t, [s["rss_mb"] for s in samples], marker=".", color="tab:blue", label="RSS (VmRSS)")
    ax1.set_ylabel("daemon RSS (MiB)")
    ax1.set_ylim(bottom=0)
    for key, label, colour in (("stored_ms", "publish → stored p99", "tab:green"),
                               ("station_ms", "publish → station p99", "tab:orange"),
                               ("alert_ms", "reading → alert p99", "tab:red")):
        ax2.plot(t, [s[key]["p99"] for s in samples], marker=".", label=label, color=colour)
    ax2.set_ylabel("p99 per interval (ms, log scale)")
    ax2.set_yscale("log")  # one stalled interval would flatten the rest on a linear axis
    ax2.set_xlabel("minutes since the load started")
    warm = [s for s in samples if s["warmup"]]
    fill_min = r.get("window_fill_s", 0) / 60
    for ax in (ax1, ax2):
        if warm:
            ax.axvspan(0, warm[-1]["t_end_s"] / 60, color="grey", alpha=0.15, label="warm-up (excluded)")
        if t and fill_min < t[-1]:
            ax.axvline(fill_min, color="grey", linestyle=":", label="windows full")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax1 else "upper right", fontsize=8)
    p = r["params"]
    verdict = r.get("verdict", {}).get("flat")
    fig.suptitle(f"Soak: {p['patients']} patients, {p['minutes']:g} min, {p['interval_s']:g} s intervals"
                 + ("" if verdict is None else f" ({'flat' if verdict else 'NOT flat'})"))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------------------
def _interrupt() -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per sample")
    parser.add_argument("--warmup-intervals", type=int, default=2)
    parser.add_argument("--station-burst", type=float, default=None,
                        help="seconds of station probing per interval (default 40 %% of it, 4-20 s)")
    parser.add_argument("--json", default=str(RESULTS / "soak.json"), help="'' to write none")
    parser.add_argument("--plot", nargs="?", const=str(PLOT), default=None, help=f"write a PNG (default {PLOT})")
    args = parser.parse_args(argv)

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        ingest._STOP.set()  # the daemon's log waits give up
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise KeyboardInterrupt from None
        loop.call_soon_threadsafe(_interrupt)

    previous = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    result: dict[str, Any] = {}
    code = 0
    _say(HEADER)
    try:
        run_soak(args.patients, args.minutes, args.interval, warmup_intervals=args.warmup_intervals,
                 station_burst_s=args.station_burst, result=result, on_sample=lambda s: _say(format_row(s)))
        code = 0 if result["verdict"]["flat"] else 1
    except KeyboardInterrupt:
        _say("bench.soak: interrupted; the daemon, load generator, broker and database are stopped or dropped")
        result["error"] = "interrupted"
        code = 130
    except Exception as exc:  # a measurement failure: keep what was measured
        _say(f"bench.soak: measurement failed: {exc}")
        result["error"] = repr(exc)[:3000]
        code = 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    if result.get("samples") and "verdict" in result:
        print(format_table(result))
    if args.json and result:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        _say(f"wrote {path}")
    if args.plot and result.get("samples"):
        plot(result, Path(args.plot))
        _say(f"wrote {args.plot}")
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Several ward daemons on one machine: backlog drain and live publish -> stored latency for K daemons.

One private Mosquitto (``MosquittoBroker``: unlimited queues, persistence, TCP_NODELAY) and ONE
PostgreSQL database shared by every daemon, as a deployment would run them: each daemon its own
ward id (so its own topic subtree and persistent session), its own HTTP port, one writer
connection; all of them migrate the same database at start. For each K in ``--daemons``:

(a) backlog drain: start the K daemons once (their persistent sessions), stop them, publish a
    backlog of N patients x S s (``generate_ward`` per ward, the patients split across the K wards),
    start all K again and time from the first daemon's ``mqtt_connected`` until the readings table
    holds the whole backlog (polled every 20 ms): aggregate rows/s.
(b) live: the same daemons keep running; one ``bench.loadgen.LoadGenerator`` per ward publishes its
    share of N patients in real time (CONTRACT.md periods, ``ts`` = publish time). After a warm-up,
    two scrapes of every daemon's ``/metrics`` ``--seconds`` apart give the aggregate
    publish -> stored latency (``monitorme_store_lag_seconds`` bucket counts merged over the K
    daemons), the daemons' total CPU share of one core, the broker's and the generators' CPU and
    the whole machine's busy cores; per-daemon peak RSS (VmHWM) is read before the SIGTERM.

Usage::

    python -m bench.scaling [--patients 500] [--seconds 20] [--backlog-seconds 20] [--daemons 1,2,4]
                            [--json bench/results/scaling.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

import asyncpg
import psutil  # type: ignore[import-untyped]
import uvloop

from bench.ingest import (
    REPO,
    SYSTEM_PG_DSN,
    BenchError,
    Collected,
    _admin_dsn,
    _cpu_model,
    _cpu_s,
    _Daemon,
    _execute,
    _mosquitto_version,
    _publish_all,
    _say,
    _server_version,
    _source_tree,
)
from bench.loadgen import LoadGenerator
from monitorme.demo.services import MosquittoBroker, free_port, with_database
from monitorme.metrics import histogram_quantile
from monitorme.sim.model import generate_ward

LAG_METRIC: Final = "monitorme_store_lag_seconds"
DELAY_METRIC: Final = "monitorme_store_delay_seconds"
POLL_S: Final = 0.02  # count(*) of a few 10k rows takes a few ms
STOP_TIMEOUT_S: Final = 30.0
WARMUP_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 90.0

SCHEMA: Final = (
    "bench/scaling.py results: K MonitorMe ward daemons (python -m monitorme run --insecure-no-auth, one "
    "process each, own ward id, own HTTP port) on one machine, one private Mosquitto (unlimited queues, "
    "persistence, TCP_NODELAY) and ONE shared PostgreSQL database. "
    "date: UTC time the run finished; machine: nproc, cpu_model, python, mosquitto, postgresql; source: git "
    "commit measured and how many tracked files differed. patients (N): total patients, split as evenly as "
    "possible over the K wards; backlog_seconds (S): simulated seconds of backlog; seconds: live measurement "
    "window; warmup_s: live load before the window opens. "
    "runs[]: one per K. wards: ward ids; patients_per_ward; loadavg_1m_at_start: the machine's 1-minute "
    "load average when this K began (others' work on a shared machine shows here). "
    "backlog.messages: generate_ward(ward, patients_per_ward, S) summed over wards (hospital mix, ECG "
    "included); backlog.seconds: from the earliest mqtt_connected log 'ts' of the restarted daemons until "
    "SELECT count(*) FROM readings (polled every 20 ms) equals messages; backlog.rows_per_s = messages / "
    "seconds (aggregate over K); backlog.connect_spread_s: last minus first mqtt_connected (daemons starting "
    "later drain for less of the span); backlog.daemon_cpu_s: sum over daemons of user+sys CPU from each "
    "one's mqtt_connected to the end; backlog.cpu_s_per_1000: that per 1,000 rows; "
    "backlog.machine_busy_cores: whole machine (all processes, psutil.cpu_times) busy CPU-s / wall s from "
    "the restart of the daemons (their start-up included) to the end of the drain. "
    "live: one bench.loadgen.LoadGenerator per ward (separate processes, paho QoS 1, ts = publish "
    "wall time in ms); live.expected_msg_per_s: N x 4.22 msg/s; live.published_msg_per_s: sum over "
    "generators of messages published / seconds each ran (warm-up included); live.generator_lag_max_s: "
    "the largest schedule lag any generator saw (a tick's oldest due message, once sent); "
    "live.stored_per_s: sum over daemons of the monitorme_stored_total increase over the window / window "
    "seconds; live.store_lag_ms: p50/p99/mean of "
    "publish -> committed (monitorme_store_lag_seconds: per-bucket count increase between the two scrapes, "
    "merged over the K daemons, quantiles by monitorme.metrics.histogram_quantile = linear interpolation "
    "inside a bucket, so they are bucket-resolution estimates; 'count' is the number of readings in the "
    "window); live.store_delay_ms: the same for received by the daemon -> committed; "
    "live.daemon_cpu_cores: total daemon user+sys CPU-s over the window / window s (share of ONE core; "
    "2.0 would be this whole 2-core machine); live.per_daemon_cpu_cores; live.broker_cpu_cores, "
    "live.generator_cpu_cores: the same for Mosquitto and the load generator processes; "
    "live.machine_busy_cores: whole machine busy cores over the window (PostgreSQL and other users of the "
    "machine included). peak_rss_mb: each daemon's VmHWM (peak resident set over its life: backlog drain and "
    "live load) in MiB, read before SIGTERM; exit_codes: after SIGTERM (0 expected). "
    "problems: anything that went wrong (empty on a clean run)."
)


def _split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal integers.

    >>> _split(500, 3)
    [167, 167, 166]
    """
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# -- /metrics histograms ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Hist:
    """A scraped histogram: bucket upper bounds and per-bucket (not cumulative) counts, +Inf last."""

    bounds: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def minus(self, earlier: Hist) -> Hist:
        if not earlier.counts:
            return Hist(list(self.bounds), list(self.counts), self.sum)
        if earlier.bounds != self.bounds:
            raise BenchError("histogram bounds changed between scrapes")
        return Hist(list(self.bounds), [a - b for a, b in zip(self.counts, earlier.counts, strict=True)],
                    self.sum - earlier.sum)

    def plus(self, other: Hist) -> Hist:
        if not self.counts:
            return Hist(list(other.bounds), list(other.counts), other.sum)
        if not other.counts:
            return self
        if other.bounds != self.bounds:
            raise BenchError("daemons report different histogram bounds")
        return Hist(list(self.bounds), [a + b for a, b in zip(self.counts, other.counts, strict=True)],
                    self.sum + other.sum)

    def summary_ms(self) -> dict[str, float | int | None]:
        n = self.count
        if not n:
            return {"count": 0, "p50": None, "p99": None, "mean": None}
        return {
            "count": n,
            "p50": round(1000 * histogram_quantile(0.5, self.bounds, self.counts), 2),
            "p99": round(1000 * histogram_quantile(0.99, self.bounds, self.counts), 2),
            "mean": round(1000 * self.sum / n, 2),
        }


def parse_metrics(text: str) -> tuple[dict[str, float], dict[str, Hist]]:
    """Prometheus text -> (plain series summed by name, histograms by name)."""
    totals: dict[str, float] = {}
    cumulative: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, raw = line.rpartition(" ")
        try:
            value = float(raw)
        except ValueError:
            continue
        name, _, labels = series.partition("{")
        if name.endswith("_bucket") and 'le="' in labels:
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            cumulative.setdefault(name.removesuffix("_bucket"), []).append((math.inf if le == "+Inf" else float(le),
                                                                            value))
            continue
        if name.endswith("_sum"):
            sums[name.removesuffix("_sum")] = value
        totals[name] = totals.get(name, 0.0) + value
    hists: dict[str, Hist] = {}
    for name, points in cumulative.items():
        points.sort()
        counts: list[int] = []
        previous = 0.0
        for _le, cum in points:
            counts.append(int(cum - previous))
            previous = cum
        hists[name] = Hist([le for le, _ in points if le != math.inf], counts, sums.get(name, 0.0))
    return totals, hists


def _scrape(daemon: _Daemon) -> tuple[dict[str, float], dict[str, Hist]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=10) as resp:
        return parse_metrics(resp.read().decode("utf-8"))


# -- processes ------------------------------------------------------------------------------------------
def _busy_s() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _tree_cpu_s(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += _cpu_s(psutil.Process(pid))
    return total


def _broker_pid(broker: MosquittoBroker) -> int | None:
    """Our private Mosquitto among this process's children (its config lives in the broker's workdir)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name().startswith("mosquitto") and str(broker.workdir) in " ".join(child.cmdline()):
                return int(child.pid)
    return None


class Fleet:
    """K daemons, one per ward, against one broker and one database."""

    def __init__(self, url: str, dsn: str, wards: Sequence[str]) -> None:
        self.base = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
        self.base.update({
            "MONITORME_MQTT_URL": url,
            "MONITORME_DATABASE_URL": dsn,
            "MONITORME_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        })
        self.wards = list(wards)
        self.daemons: list[_Daemon] = []

    def start(self) -> None:
        for ward in self.wards:
            port = free_port()
            self.daemons.append(_Daemon({**self.base, "MONITORME_WARD": ward, "MONITORME_HTTP": f"127.0.0.1:{port}"},
                                        port))

    def wait_connected(self) -> list[tuple[float, float]]:
        """Per daemon: its mqtt_connected log 'ts' (epoch s) and its CPU-s when the bench saw the line."""
        found: list[tuple[float, float] | None] = [None] * len(self.daemons)
        errors: list[BaseException] = []

        def wait(i: int, d: _Daemon) -> None:
            try:
                doc, _seen = d.wait_event("mqtt_connected", CONNECT_TIMEOUT_S)
                found[i] = (datetime.fromisoformat(str(doc["ts"])).timestamp(), _cpu_s(d.ps))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=wait, args=(i, d), daemon=True) for i, d in enumerate(self.daemons)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise BenchError(f"daemon did not connect: {errors[0]}")
        return [f for f in found if f is not None]

    def stop(self) -> list[int]:
        """SIGTERM every daemon at once, then wait; the exit codes."""
        for d in self.daemons:
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
        for d in self.daemons:
            # Wait here: _Daemon.stop() would send a second SIGTERM to a daemon still flushing.
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.proc.wait(STOP_TIMEOUT_S)
        return [d.stop() for d in self.daemons]

    def warnings(self) -> list[str]:
        return [w for d in self.daemons for w in d.warnings]


async def _wait_count(dsn: str, fleet: Fleet, expected: int, timeout_s: float) -> tuple[int, float]:
    """Poll until the readings table holds ``expected`` rows; (count, epoch s when seen)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            count = int(await conn.fetchval("SELECT count(*) FROM readings"))
            now = time.time()
            if count >= expected:
                return count, now
            dead = [d.proc.returncode for d in fleet.daemons if d.proc.poll() is not None]
            if dead:
                raise BenchError(f"a daemon exited ({dead}) at {count} of {expected} rows")
            if time.monotonic() > deadline:
                raise BenchError(f"{count} of {expected} readings stored in {timeout_s:g} s")
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()


# -- one K ------------------------------------------------------------------------------------------------
def run_k(k: int, patients: int, seconds: float, backlog_s: float, broker: MosquittoBroker, dsn: str,
          stack: contextlib.ExitStack) -> dict[str, Any]:
    """Backlog drain then live load with ``k`` daemons; the run's dict."""
    tag = secrets.token_hex(2)
    wards = [f"k{k}w{i + 1}-{tag}" for i in range(k)]
    sizes = _split(patients, k)
    problems: list[str] = []
    out: dict[str, Any] = {"daemons": k, "wards": wards, "patients_per_ward": sizes,
                           "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}

    # (a) sessions, backlog, drain
    first = Fleet(broker.url, dsn, wards)
    stack.callback(first.stop)
    first.start()
    first.wait_connected()
    codes = first.stop()
    if any(codes):
        problems.append(f"K={k}: session run exit codes {codes}")
    uvloop.run(_execute(dsn, "TRUNCATE readings, dead_letters"))
    start_ms = int(time.time() * 1000) - int(backlog_s * 1000) - 60_000
    total = 0
    collected = Collected()
    for ward, n in zip(wards, sizes, strict=True):
        messages = list(generate_ward(ward, n, start_ms, backlog_s))
        _publish_all(messages, broker.url, collected)
        total += len(messages)
    _say(f"K={k}: backlog {total:,} messages published ({sum(collected.publish_rates) / k:,.0f} msg/s), "
         f"restarting {k} daemon(s)")
    fleet = Fleet(broker.url, dsn, wards)
    stack.callback(fleet.stop)
    busy0, restart = _busy_s(), time.time()
    fleet.start()
    connected = fleet.wait_connected()
    t_first = min(ts for ts, _ in connected)
    count, t_done = uvloop.run(_wait_count(dsn, fleet, total, max(60.0, total / 500)))
    busy1 = _busy_s()
    drain_cpu = sum(_cpu_s(d.ps) - cpu for d, (_, cpu) in zip(fleet.daemons, connected, strict=True))
    drain_s = t_done - t_first
    if count != total:
        problems.append(f"K={k}: stored {count} readings of a {total} backlog")
    out["backlog"] = {
        "messages": total,
        "seconds": round(drain_s, 3),
        "rows_per_s": round(total / drain_s, 1) if drain_s > 0 else None,
        "connect_spread_s": round(max(ts for ts, _ in connected) - t_first, 3),
        "daemon_cpu_s": round(drain_cpu, 3),
        "cpu_s_per_1000": round(1000 * drain_cpu / total, 4) if total else None,
        "machine_busy_cores": round((busy1 - busy0) / max(t_done - restart, 1e-9), 2),
    }
    _say(f"K={k}: backlog drained at {out['backlog']['rows_per_s']:,.0f} rows/s ({total:,} in {drain_s:.2f} s)")

    # (b) live load on the same daemons
    gens: list[LoadGenerator] = []
    first_patient = 1
    for ward, n in zip(wards, sizes, strict=True):
        gen = LoadGenerator(broker.url, ward, n, first_patient=first_patient, seed=first_patient)
        first_patient += n
        stack.callback(gen.stop)
        gens.append(gen)
    for gen in gens:
        gen.start()
    _say(f"K={k}: live load on, {sum(g.expected_rate for g in gens):,.0f} msg/s from "
         f"{sum(g.processes for g in gens)} generator process(es); warm-up {WARMUP_S:g} s, window {seconds:g} s")
    time.sleep(WARMUP_S)
    broker_pid = _broker_pid(broker)
    gen_pids = [p for g in gens for p in g.pids]
    before = [_scrape(d) for d in fleet.daemons]
    cpu_before = [_cpu_s(d.ps) for d in fleet.daemons]
    broker_cpu0 = _tree_cpu_s([broker_pid] if broker_pid else [])
    gen_cpu0 = _tree_cpu_s(gen_pids)
    busy0, wall0 = _busy_s(), time.monotonic()
    time.sleep(seconds)
    after = [_scrape(d) for d in fleet.daemons]
    wall = time.monotonic() - wall0
    busy = _busy_s() - busy0
    cpu = [_cpu_s(d.ps) - c for d, c in zip(fleet.daemons, cpu_before, strict=True)]
    broker_cpu = _tree_cpu_s([broker_pid] if broker_pid else []) - broker_cpu0
    gen_cpu = _tree_cpu_s(gen_pids) - gen_cpu0
    gen_results = [g.stop() for g in gens]
    lag, delay = Hist(), Hist()
    stored = 0.0
    for (tb, hb), (ta, ha) in zip(before, after, strict=True):
        stored += ta.get("monitorme_stored_total", 0.0) - tb.get("monitorme_stored_total", 0.0)
        if LAG_METRIC in ha:
            lag = lag.plus(ha[LAG_METRIC].minus(hb.get(LAG_METRIC, Hist())))
        if DELAY_METRIC in ha:
            delay = delay.plus(ha[DELAY_METRIC].minus(hb.get(DELAY_METRIC, Hist())))
    if not lag.count:
        problems.append(f"K={k}: no {LAG_METRIC} observations in the window")
    for r in gen_results:
        problems += [f"K={k}: load generator {e}" for e in r.get("errors", [])]
    out["live"] = {
        "expected_msg_per_s": round(sum(g.expected_rate for g in gens), 1),
        "published_msg_per_s": round(sum(r.get("rate", 0.0) for r in gen_results), 1),
        "generator_processes": sum(r.get("processes", 0) for r in gen_results),
        "generator_lag_max_s": max((r.get("lagging_s", 0.0) for r in gen_results), default=None),
        "window_s": round(wall, 3),
        "stored_per_s": round(stored / wall, 1),
        "store_lag_ms": lag.summary_ms(),
        "store_delay_ms": delay.summary_ms(),
        "daemon_cpu_cores": round(sum(cpu) / wall, 3),
        "per_daemon_cpu_cores": [round(c / wall, 3) for c in cpu],
        "broker_cpu_cores": round(broker_cpu / wall, 3) if broker_pid else None,
        "generator_cpu_cores": round(gen_cpu / wall, 3),
        "machine_busy_cores": round(busy / wall, 2),
    }
    out["peak_rss_mb"] = [round(d.peak_rss() / 2**20, 1) for d in fleet.daemons]
    codes = fleet.stop()
    out["exit_codes"] = codes
    if any(codes):
        problems.append(f"K={k}: exit codes after SIGTERM {codes}")
    warnings = fleet.warnings()
    if warnings:
        problems.append(f"K={k}: daemons logged {len(warnings)} warnings/errors: {sorted(set(warnings))[:5]}")
    out["problems"] = problems
    live = out["live"]
    _say(f"K={k}: live {live['stored_per_s']:,.0f} stored/s, publish->stored p50 {live['store_lag_ms']['p50']} ms "
         f"p99 {live['store_lag_ms']['p99']} ms, daemons {live['daemon_cpu_cores']:.2f} core, "
         f"machine {live['machine_busy_cores']:.2f} of {os.cpu_count()} cores")
    return out


@contextlib.contextmanager
def _database(admin: str) -> Iterator[str]:
    name = f"monitorme_bench_{secrets.token_hex(4)}"
    uvloop.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(admin, name)
    finally:
        uvloop.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(patients: int, seconds: float, daemon_counts: Sequence[int], *,
        backlog_seconds: float = 20.0) -> dict[str, Any]:
    """Measure every K in ``daemon_counts``; the report as a JSON-ready dict (``SCHEMA`` explains it)."""
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as outer:
        broker = outer.enter_context(MosquittoBroker())
        admin = outer.enter_context(_admin_dsn())
        dsn = outer.enter_context(_database(admin))
        pg_version = uvloop.run(_server_version(admin))
        _say(f"broker {broker.url}, one shared database on {'5432' if admin == SYSTEM_PG_DSN else 'pgserver'}")
        for k in daemon_counts:
            with contextlib.ExitStack() as stack:
                runs.append(run_k(k, patients, seconds, backlog_seconds, broker, dsn, stack))
    return {
        "schema": SCHEMA,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu_model": _cpu_model(), "python": platform.python_version(),
                    "mosquitto": _mosquitto_version(), "postgresql": pg_version},
        "source": _source_tree(),
        "patients": patients,
        "backlog_seconds": backlog_seconds,
        "seconds": seconds,
        "warmup_s": WARMUP_S,
        "runs": runs,
        "problems": [p for r in runs for p in r["problems"]],
    }


def _fmt(value: object, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"{report['patients']} patients over K wards; backlog {report['patients']} x {report['backlog_seconds']:g} s; "
        f"live window {report['seconds']:g} s; {m['nproc']} cores, Mosquitto {m['mosquitto']}, "
        f"PostgreSQL {m['postgresql']}",
        "",
        f"{'K':>2} | {'drain rows/s':>12} {'CPU-s/1k':>8} | {'pub msg/s':>9} {'stored/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'gen lag s':>9} | {'daemons':>7} {'broker':>6} {'loadgen':>7} {'machine':>7} | "
        f"peak RSS MiB",
        "-" * 120,
    ]
    for r in report["runs"]:
        b, lv = r["backlog"], r["live"]
        lines.append(
            f"{r['daemons']:>2} | {_fmt(b['rows_per_s']):>12} {_fmt(b['cpu_s_per_1000'], '.3f'):>8} | "
            f"{_fmt(lv['published_msg_per_s']):>9} {_fmt(lv['stored_per_s']):>8} "
            f"{_fmt(lv['store_lag_ms']['p50'], '.1f'):>7} {_fmt(lv['store_lag_ms']['p99'], '.1f'):>7} "
            f"{_fmt(lv['generator_lag_max_s'], '.3f'):>9} | {lv['daemon_cpu_cores']:>7.2f} "
            f"{_fmt(lv['broker_cpu_cores'], '.2f'):>6} {lv['generator_cpu_cores']:>7.2f} "
            f"{lv['machine_busy_cores']:>7.2f} | {', '.join(f'{x:.0f}' for x in r['peak_rss_mb'])}"
        )
    lines.append("(daemons/broker/loadgen/machine: CPU cores busy over the live window; machine includes PostgreSQL)")
    for p in report["problems"]:
        lines.append(f"PROBLEM: {p}")
    return "\n".join(lines)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=500, help="patients in total, split over the wards")
    parser.add_argument("--seconds", type=float, default=20.0, help="live measurement window per K")
    parser.add_argument("--backlog-seconds", type=float, default=20.0, help="simulated seconds of backlog")
    parser.add_argument("--daemons", default="1,2,4", help="comma-separated daemon counts (default 1,2,4)")
    parser.add_argument("--json", default="bench/results/scaling.json", help="'' to skip")
    args = parser.parse_args(argv)
    try:
        counts = [int(x) for x in args.daemons.split(",") if x.strip()]
    except ValueError:
        parser.error("--daemons takes integers like 1,2,4")
    if not counts or min(counts) < 1 or args.patients < max(counts) or args.seconds <= 0 or args.backlog_seconds <= 0:
        parser.error("need --daemons >= 1, --patients >= the largest K, positive --seconds/--backlog-seconds")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with &
    try:
        report = run(args.patients, args.seconds, counts, backlog_seconds=args.backlog_seconds)
    except BenchError as exc:
        _say(f"bench.scaling: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("bench.scaling: interrupted; daemons stopped, broker stopped, database dropped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    print(format_table(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {path}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

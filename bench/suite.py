"""The whole benchmark in one run: limits, MonitorMe end to end, latency against load, the operator core.

    python -m bench.suite [--quick] [--json bench/results/latest.json] [--report bench/RESULTS.md]
    pytest bench/                      # the same, plus the micro-benchmarks (bench/test_suite.py)

Everything runs on ONE private Mosquitto (no-loss configuration, TCP_NODELAY) and ONE PostgreSQL
server (127.0.0.1:5432, else an embedded pgserver), in this order:

1. ``limits_and_drain``: bench.ingest on a 500-patient x 30 s QoS 1 backlog: bare aiomqtt (3.1.1 and
   5), bare paho (3.1.1 and 5), our bare wire client, raw asyncpg COPY, and MonitorMe end to end
   (publish -> committed, ack after commit), with its CPU seconds per 1,000 readings and peak RSS.
1b. ``ingest_paths``: bench.ingest_paths, the alternatives measured before choosing the ingest path
   (our wire protocol under Receive Maximum and broker in-flight settings, 4 connections, paho's thread
   handing batches to asyncio, gmqtt); it starts its own brokers for the in-flight settings.
2. ``drain_5000``: MonitorMe draining a 5,000-patient x 6 s backlog: CPU per 1,000 and peak RSS
   with ten times the patients' state.
3. ``live``: ``monitorme run`` fed in real time by bench.loadgen (separate publisher processes,
   ts = publish time) at 50, 100, 250, 500 and 1,000 patients at the device periods, and 5,000
   patients at a quarter of them. At each load: publish -> stored p50/p99/max (the daemon's
   ``monitorme_store_lag_seconds`` histogram, scraped before and after), publish -> station
   WebSocket (25-style stations of 20 patients, one screen each, a probe patient per station at
   5 Hz), breaching reading -> alert on MQTT (bench.alert_latency's glucose probe, a rule with no
   delay), daemon CPU share of one core, peak RSS.
3b. ``scaling``: bench.scaling, 1, 2 and 4 ward daemons sharing one broker and one database (its own
   pair): aggregate backlog drain and live publish -> stored at 500 patients split over the wards.
4. ``operator_core``: bench.operator_core (windows + rules, no I/O) beside a naive loop and bytewax.
5. ``nodered`` (if node and npm are present): the batched Node-RED flow of PERF.md on the same
   broker and database: backlog drain and publish -> row latency at hospital load.

Results: ``bench/results/latest.json`` (its ``schema`` field explains every field), the table in
``bench/RESULTS.md`` and plots in ``bench/plots/``. Takes about 10 minutes (``--quick``: 3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import secrets
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import ingest, ingest_paths, scaling
from bench.alert_latency import Probe, percentile
from bench.ingest import REPO, _admin_dsn, _cpu_s, _Daemon, _execute, _say
from monitorme.demo.services import MosquittoBroker, free_port, with_database
from monitorme.metrics import histogram_quantile
from monitorme.sim.model import generate_ward

RESULTS = REPO / "bench" / "results"
PLOTS = REPO / "bench" / "plots"
PATIENTS_PER_STATION = 20
MAX_STATIONS = 25

SCHEMA = (
    "bench/suite.py results, one run on one broker and one database server. "
    "date, commit, machine: when, what tree, where (nproc, cpu model, versions). "
    "limits_and_drain: bench/ingest.py's report (its own schema field explains it): bare client drain rates "
    "(msg/s), raw COPY (rows/s), MonitorMe end-to-end backlog drain (rows/s, cpu_s_per_1000, peak_rss_mb) "
    "and their ratios. "
    "ingest_paths: bench/ingest_paths.py's msg_per_s per alternative (bare drains, no processing). "
    "drain_5000: the same MonitorMe drain with 5,000 patients (rows_per_s, cpu_s_per_1000, peak_rss_mb). "
    "live: one entry per load: patients, speed (1 = CONTRACT.md device periods), offered_msg_per_s "
    "(what the generator published), publish_to_stored_ms / publish_to_station_ms / alert_ms "
    "{p50, p99, max, n} (stored from the daemon's histogram, interpolated within 5 ms buckets, max = the "
    "upper bound of the highest non-empty bucket; station and alert timed one by one on this machine's "
    "clock), cpu_share (daemon user+sys CPU / wall time; 1.0 = one core), cpu_s_per_1000 (daemon CPU per "
    "1,000 readings accepted), peak_rss_mb (VmHWM), readings_per_s (accepted by the daemon). "
    "scaling: bench/scaling.py's report (its schema field explains it). "
    "operator_core: readings/s of MonitorMe's core on the comparison subset, the naive loop, bytewax, and "
    "MonitorMe with every shipped rule; ratio_vs_bytewax. "
    "nodered: the peer's drain and latency, or null with a reason. goals: each goal, its figure, met or not."
)


# -- scraping the daemon's histogram ------------------------------------------------------------------
def scrape_histogram(port: int, name: str = "monitorme_store_lag_seconds") -> tuple[list[float], list[int]]:
    """Bucket bounds and per-bucket (not cumulative) counts, +Inf last, from ``GET /metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    bounds: list[float] = []
    cumulative: list[int] = []
    for line in text.splitlines():
        if line.startswith(f'{name}_bucket{{le="'):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            if le != "+Inf":
                bounds.append(float(le))
            cumulative.append(int(float(line.rsplit(" ", 1)[1])))
    counts = [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]
    return bounds, counts


def histogram_summary(bounds: list[float], before: list[int], after: list[int]) -> dict[str, float | int | None]:
    counts = [a - b for a, b in zip(after, before or [0] * len(after), strict=True)]
    n = sum(counts)
    if not n:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    top = max(i for i, c in enumerate(counts) if c)
    highest = bounds[top] if top < len(bounds) else math.inf
    return {"p50": round(1000 * histogram_quantile(0.5, bounds, counts), 1),
            "p99": round(1000 * histogram_quantile(0.99, bounds, counts), 1),
            "max": round(1000 * highest, 1) if math.isfinite(highest) else None, "n": n}


def _timed(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {"p50": round(percentile(values, 50), 1), "p99": round(percentile(values, 99), 1),
            "max": round(max(values), 1), "n": len(values)}


# -- publish -> station screen ----------------------------------------------------------------------------
async def station_probe(http_url: str, broker_port: int, ward: str, patients: int, seconds: float,
                        ready: threading.Event | None = None) -> list[float]:
    """Assign loadgen's patients to stations of 20, open one screen per station, time probe readings.

    At most 25 stations (500 patients) are watched, however large the load: beyond that the extra
    patients are analysed and stored but not on a screen, as in a hospital with more wards.
    """
    watched = min(patients, MAX_STATIONS * PATIENTS_PER_STATION)
    stations = max(1, math.ceil(watched / PATIENTS_PER_STATION))
    sent: dict[tuple[str, int], float] = {}
    latencies: list[float] = []
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", broker_port)
    pub.loop_start()
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(watched):
                async with http.put(f"{http_url}/api/patients/p{i + 1:04d}",
                                    json={"station": f"s{i // PATIENTS_PER_STATION + 1:02d}"}) as r:
                    r.raise_for_status()
            for s in range(stations):
                async with http.put(f"{http_url}/api/patients/probe{s + 1:02d}",
                                    json={"station": f"s{s + 1:02d}"}) as r:
                    r.raise_for_status()
            sockets = [await http.ws_connect(f"{http_url.replace('http', 'ws')}/ws/stations/s{s + 1:02d}",
                                             max_msg_size=0) for s in range(stations)]

            async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
                async for msg in ws:
                    now = time.time()
                    frame = orjson.loads(msg.data)
                    if frame["type"] != "vitals":
                        continue
                    for r in frame["readings"]:
                        at = sent.pop((r["patient"], r["ts"]), None)
                        if at is not None:
                            latencies.append((now - at) * 1000)

            readers = [asyncio.create_task(read(ws)) for ws in sockets]
            if ready is not None:
                ready.set()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for s in range(stations):
                    ts = int(time.time() * 1000)
                    patient = f"probe{s + 1:02d}"
                    sent[(patient, ts)] = time.time()
                    pub.publish(f"monitorme/{ward}/{patient}/heart_rate", orjson.dumps({"ts": ts, "value": 75.0}),
                                qos=1)
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            for ws in sockets:
                await ws.close()
            for task in readers:
                task.cancel()
    finally:
        pub.loop_stop()
        pub.disconnect()
    return latencies


# -- one live load --------------------------------------------------------------------------------------
def live(broker: MosquittoBroker, dsn: str, patients: int, seconds: float, *, speed: float = 1.0,
         warmup_s: float = 6.0) -> dict[str, Any]:
    """The daemon under ``patients`` in real time: latencies, CPU share and memory."""
    from bench.loadgen import LoadGenerator

    ward = f"live{patients}-{secrets.token_hex(2)}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
    env.update(MONITORME_MQTT_URL=broker.url, MONITORME_DATABASE_URL=dsn, MONITORME_WARD=ward,
               MONITORME_HTTP=f"127.0.0.1:{port}", MONITORME_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    daemon = _Daemon(env, port)
    result: dict[str, Any] = {"patients": patients, "speed": speed}
    try:
        daemon.wait_event("mqtt_connected", 60)
        with LoadGenerator(broker.url, ward, patients, speed=speed) as load:
            time.sleep(warmup_s)  # every device has reported, windows are filling
            bounds, before = scrape_histogram(port)
            m0 = daemon.metrics()
            cpu0, wall0 = _cpu_s(daemon.ps), time.monotonic()
            probe = Probe(broker.port, ward)
            stop = threading.Event()
            alerts = threading.Thread(target=probe.run, args=(seconds, stop), daemon=True)
            alerts.start()
            station_ms = asyncio.run(station_probe(f"http://127.0.0.1:{port}", broker.port, ward, patients, seconds))
            alerts.join(seconds + 10)
            time.sleep(1.0)
            cpu = _cpu_s(daemon.ps) - cpu0
            wall = time.monotonic() - wall0
            _, after = scrape_histogram(port)
            m1 = daemon.metrics()
            probe.close()
            generated = load.stop()
        readings = m1.get("monitorme_readings_total", 0.0) - m0.get("monitorme_readings_total", 0.0)
        result.update({
            "seconds": round(wall, 1),
            "offered_msg_per_s": generated.get("rate"),
            "generator": generated,
            "readings_per_s": round(readings / wall, 1),
            "publish_to_stored_ms": histogram_summary(bounds, before, after),
            "publish_to_station_ms": _timed(station_ms),
            "alert_ms": _timed(probe.latency_ms),
            "cpu_share": round(cpu / wall, 3),
            "cpu_s_per_1000": round(1000 * cpu / readings, 4) if readings else None,
            "peak_rss_mb": round(daemon.peak_rss() / 2**20, 1),
        })
    finally:
        code = daemon.stop()
    result["exit_code"] = code
    if code != 0:
        result["problem"] = f"daemon exited with {code}: {daemon.log_tail()[-1500:]}"
    return result


def drain_5000(broker: MosquittoBroker, dsn: str, patients: int, seconds: float) -> dict[str, Any]:
    """MonitorMe draining a backlog of many patients: CPU per reading and memory with their state."""
    start_ms = int(time.time() * 1000) - int(seconds * 1000) - 60_000
    ward = f"big-{secrets.token_hex(2)}"
    messages = list(generate_ward(ward, patients, start_ms, seconds))
    collected = ingest.Collected()
    result = ingest.monitorme_drain(broker.url, dsn, ward, messages, collected)
    return {"patients": patients, "seconds_of_data": seconds, "messages": len(messages),
            "rows_per_s": round(result.drain.rate, 1), "cpu_s_per_1000": round(1000 * result.cpu_s / len(messages), 4),
            "peak_rss_mb": round(result.peak_rss_bytes / 2**20, 1), "exit_code": result.exit_code,
            "problems": collected.problems}


# -- orchestration -------------------------------------------------------------------------------------------
LOADS_FULL = ((50, 1.0), (100, 1.0), (250, 1.0), (500, 1.0), (1000, 1.0), (5000, 0.25))
LOADS_QUICK = ((50, 1.0), (500, 1.0), (5000, 0.25))


def _step(results: dict[str, Any], name: str, run: Callable[[], Any]) -> None:
    _say(f"== {name}")
    started = time.monotonic()
    try:
        results[name] = run()
    except Exception as exc:  # one failed part must not lose the others' figures
        results[name] = {"error": repr(exc)[:2000]}
        _say(f"   {name} FAILED: {exc}")
    _say(f"   {name} took {time.monotonic() - started:.0f} s")


def run(quick: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {"schema": SCHEMA, "quick": quick}
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(MosquittoBroker())
        admin = stack.enter_context(_admin_dsn())
        db = f"monitorme_bench_{secrets.token_hex(4)}"
        asyncio.run(_execute(admin, f'CREATE DATABASE "{db}"'))
        stack.callback(lambda: asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')))
        dsn = with_database(admin, db)
        _step(results, "limits_and_drain", lambda: ingest.run_all(500, 10 if quick else 30, 1, True,
                                                                   shared=(broker, admin)))
        _step(results, "ingest_paths", lambda: ingest_paths.run(500, 10 if quick else 20))
        _step(results, "drain_5000", lambda: drain_5000(broker, dsn, 5000, 3 if quick else 6))
        loads = LOADS_QUICK if quick else LOADS_FULL
        results["live"] = []
        for patients, speed in loads:
            holder: dict[str, Any] = {}
            seconds = 8.0 if quick else 15.0
            _step(holder, f"live {patients} patients x{speed:g}",
                  functools.partial(live, broker, dsn, patients, seconds, speed=speed))
            results["live"].extend(holder.values())
        _step(results, "scaling", lambda: scaling.run(500, 10 if quick else 20, (1, 2, 4),
                                                     backlog_seconds=10 if quick else 20))
        _step(results, "operator_core", lambda: _operator_core(500, 60 if quick else 120))
        _step(results, "nodered", lambda: _nodered(broker, dsn, quick))
    results.update(_about())
    results["goals"] = goals(results)
    return results


def _operator_core(patients: int, seconds: float) -> dict[str, Any]:
    """bench.operator_core's comparison: the same readings through each implementation, alerts checked equal."""
    from dataclasses import replace

    from bench import operator_core as oc
    from monitorme.config import load_pipelines, load_rules
    from monitorme.core.ruleset import RuleSet

    registry = load_pipelines()
    full = load_rules(registry)
    subset = RuleSet([replace(r, clear_delay_s=0.0) for r in full.rules if r.name in oc.SUBSET], registry)
    data = oc.readings(patients, seconds)
    n = len(data)
    ours_s, ours = oc.monitorme(data, subset, news2=False)
    naive_s, theirs = oc.naive(data)
    rows: dict[str, Any] = {"readings": n, "alerts": len(ours), "naive_agrees": theirs == ours,
                            "monitorme_core_subset": round(n / ours_s), "naive_python_loop": round(n / naive_s)}
    # bytewax at input batches of 10,000 (as MonitorMe gets) and of 1,000 (faster for it here):
    # the ratio is taken against whichever was faster
    runs = [(size, oc.bytewax_run(data, batch=size)) for size in (10_000, 1_000)]
    done = [(size, r) for size, r in runs if r is not None]
    if done:
        size, (bw_s, _) = min(done, key=lambda x: x[1][0])
        rows["bytewax_dataflow"] = round(n / bw_s)
        rows["bytewax_batch"] = size
        rows["bytewax_agrees"] = all(r[1] == ours for _, r in done)
        rows["ratio_vs_bytewax"] = round(bw_s / ours_s, 2)
    per_s, _ = oc.monitorme(data, subset, news2=False, batch_pass=False)
    rows["monitorme_core_per_reading_path"] = round(n / per_s)
    full_s, _ = oc.monitorme(data, full)
    rows["monitorme_core_all_rules"] = round(n / full_s)
    return rows


def _nodered(broker: MosquittoBroker, dsn: str, quick: bool) -> dict[str, Any]:
    try:
        from bench import nodered_peer
    except ImportError:
        return {"skipped": "bench/nodered_peer.py missing"}
    if not nodered_peer.available():
        return {"skipped": "node/npm or the Node-RED install is not available"}
    seconds = 10 if quick else 30
    ward = f"nodered-{secrets.token_hex(2)}"
    start_ms = int(time.time() * 1000) - seconds * 1000 - 60_000
    backlog = list(generate_ward(ward, 500, start_ms, seconds))
    return {"drain": nodered_peer.drain(broker.url, dsn, ward, backlog),
            "latency": nodered_peer.latency(broker.url, dsn, f"{ward}-live", 500, 10 if quick else 20)}


def _about() -> dict[str, Any]:
    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    with contextlib.suppress(Exception):
        report.update({"machine": ingest._versions(), "source": ingest._source_tree()})
    return report


def _get(doc: Any, *path: str | int) -> Any:
    for key in path:
        try:
            doc = doc[key]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's goals, each with the figure measured in this run."""
    drain = _get(r, "limits_and_drain", "results") or {}
    mm = _get(drain, "monitorme", "median")
    aiomqtt_best = max((_get(drain, k, "median") or 0) for k in ("aiomqtt_v311", "aiomqtt_v5")) or None
    hospital: dict[str, Any] = next((x for x in r.get("live", []) if x.get("patients") == 500), {})
    loads = [x for x in r.get("live", []) if x.get("speed") == 1.0 and x.get("publish_to_station_ms", {}).get("p99")]
    p99s = [x["publish_to_station_ms"]["p99"] for x in loads if 50 <= x["patients"] <= 500]
    core = r.get("operator_core") or {}
    rows: list[dict[str, Any]] = []

    def goal(what: str, figure: Any, met: bool | None, target: str) -> None:
        rows.append({"goal": what, "target": target, "measured": figure, "met": met})

    ratio = round(mm / aiomqtt_best, 2) if mm and aiomqtt_best else None
    goal("throughput floor: MonitorMe drain / best bare aiomqtt drain (QoS 1)", ratio,
         None if ratio is None else ratio >= 0.8, ">= 0.8")
    nodered_rate = _get(r, "nodered", "drain", "rows_per_s") or 13_100
    goal("throughput goal: MonitorMe drain vs the batched Node-RED flow (rows/s)",
         mm, None if mm is None else mm >= nodered_rate, f">= {nodered_rate:,.0f}")
    stored = _get(hospital, "publish_to_stored_ms", "p99")
    goal("publish -> stored p99 at 500 patients (ms)", stored, None if stored is None else stored <= 50, "<= 50")
    station = _get(hospital, "publish_to_station_ms", "p99")
    goal("publish -> station p99 at 500 patients (ms)", station, None if station is None else station <= 100,
         "<= 100")
    cpu = hospital.get("cpu_share")
    goal("daemon CPU at 500 patients (share of one core)", cpu, None if cpu is None else cpu <= 0.60,
         "<= 0.60 (stretch 0.35)")
    alert = _get(hospital, "alert_ms", "p99")
    goal("alert latency p99 at 500 patients beyond the rule's delay (ms)", alert,
         None if alert is None else alert <= 100, "<= 100")
    rss = hospital.get("peak_rss_mb")
    goal("peak RSS at 500 patients (MB)", rss, None if rss is None else rss <= 300, "<= 300")
    flat = round(max(p99s) / min(p99s), 2) if len(p99s) >= 2 and min(p99s) > 0 else None
    goal("latency flat from 50 to 500 patients: max/min station p99", flat, None if flat is None else flat <= 2.0,
         "<= 2")
    ratio_core = core.get("ratio_vs_bytewax")
    goal("operator core / bytewax dataflow, same windows and thresholds", ratio_core,
         None if ratio_core is None else ratio_core >= 10, ">= 10")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs and fewer loads (about 3 minutes)")
    parser.add_argument("--json", default=str(RESULTS / "latest.json"))
    parser.add_argument("--report", default=str(REPO / "bench" / "RESULTS.md"), help="'' to write no report")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    _say(f"wrote {args.json}")
    if args.report:
        from bench.report import write_report

        write_report(results, Path(args.report), PLOTS)
        _say(f"wrote {args.report} and plots in {PLOTS}")
    for g in results["goals"]:
        print(f"{'met ' if g['met'] else 'NOT ' if g['met'] is False else '?   '} {g['goal']}: {g['measured']} "
              f"(target {g['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PERF.md's peer measured here: a batched Node-RED flow doing MonitorMe's job, on this machine.

The flow (``bench/nodered/flows.json``): MQTT in on ``monitorme/<ward>/+/+``, QoS 1, MQTT 3.1.1,
a fixed client id with clean session off (a persistent session) -> function: parse the JSON,
threshold check (SpO2 < 90, heart rate < 40 or > 130 go to a second output) -> join 500 messages
or 100 ms -> function: one multi-row parameterised INSERT -> PostgreSQL through a ``pg.Pool`` of
10 connections, into ``nodered_readings (ward, patient, vital, ts, value jsonb, stored_at)``, no
index. Node-RED 4.1 and ``pg`` are pinned in ``bench/nodered/package.json`` and installed on demand
with ``npm ci`` into ``bench/nodered/node_modules`` (git-ignored, kept afterwards).

``node-red-contrib-postgresql`` is not on the npm registry this project can reach, so the flow's
"postgresql" node is a function node doing what that package does per message:
``pool.query(msg.query, msg.params)`` on a ``pg.Pool`` (settings.js hands it ``pg``).

Usable from other bench modules: ``available()``, ``drain()``, ``latency()``. Alone::

    python -m bench.nodered_peer [--patients 500] [--seconds 30] [--runs 1] [--json bench/results/nodered.json]

starts a private Mosquitto (``MosquittoBroker``) and a fresh database (dropped at the end), drains a
``generate_ward(patients, seconds)`` backlog, then runs the same ward live for ``seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
import paho.mqtt.client as mqtt
import psutil  # type: ignore[import-untyped,unused-ignore]
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bench.ingest import (
    _STOP,
    BASE_WARD,
    BenchError,
    Collected,
    _admin_dsn,
    _cpu_model,
    _execute,
    _for_ward,
    _mosquitto_version,
    _PahoSubscriber,
    _publish_all,
    _say,
    _server_version,
    _source_tree,
)
from monitorme.demo.services import MosquittoBroker, free_port, with_database
from monitorme.sim.model import SimMessage, generate_ward
from monitorme.sim.publisher import parse_url, publish

REPO: Final = Path(__file__).resolve().parent.parent
NODERED_DIR: Final = REPO / "bench" / "nodered"
RED_JS: Final = NODERED_DIR / "node_modules" / "node-red" / "red.js"
SETTINGS_JS: Final = NODERED_DIR / "settings.js"
FLOWS_JSON: Final = NODERED_DIR / "flows.json"
TABLE: Final = "nodered_readings"
POLL_S: Final = 0.1
CONNECT_TIMEOUT_S: Final = 60.0
WARMUP_S: Final = 5.0
MIN_NODE_MAJOR: Final = 18

# PERF.md, "The peer to beat", batched column.
PERF_REFERENCE: Final[dict[str, float]] = {
    "drain_rows_per_s": 13_100.0,
    "latency_p50_ms": 59.0,
    "latency_p99_ms": 116.0,
    "cpu_core_share": 0.38,
}

SCHEMA: Final = (
    "bench/nodered_peer.py results: PERF.md's batched Node-RED peer (MQTT in QoS 1, persistent session -> "
    "parse + threshold -> join 500 msgs / 100 ms -> one multi-row INSERT via a pg.Pool of 10) measured on "
    "this machine with a private Mosquitto (no-loss config) and a fresh PostgreSQL database. "
    "drain: backlog generate_ward(patients, simulated_seconds) published while Node-RED was stopped (its "
    "persistent session created by a first run), then Node-RED restarted; rows_per_s = rows / seconds, "
    "seconds from reading its 'Connected to broker' log line until SELECT count(*) (polled every 100 ms) "
    "equals rows; cpu_s_per_1000: the node process's user+sys CPU over that span per 1,000 rows; "
    "peak_rss_mb: its VmHWM in MiB; node_cpu_share / pg_cpu_share: CPU seconds per wall second over that "
    "span of the node process / of the database's client backends (best effort, null if not visible); "
    "startup_to_connected_s: process start to that log line. "
    "latency: the same ward published live in real time (paho, QoS 1, ts in each payload rewritten to the "
    "publish wall time, ms); rows whose ts falls after a warm-up are compared with stored_at "
    "(clock_timestamp() in the INSERT): p50/p99/max in ms; node_cpu_share: node's CPU seconds per wall "
    "second over the measured span (1.0 = one core); pg_cpu_share: the same for the database's client "
    "backends (best effort); lost: published minus stored. drain / latency are per-key medians over 'runs' "
    "runs, each run kept in drain_runs / latency_runs; loadavg_at_start / _end: os.getloadavg() (the machine "
    "is shared). reference: PERF.md's figures."
)


# -- install ----------------------------------------------------------------------------------------
def _installed() -> bool:
    return RED_JS.is_file() and (NODERED_DIR / "node_modules" / "pg" / "package.json").is_file()


def _install() -> None:
    """``npm ci`` (or ``npm install`` without a lock file) into bench/nodered, unless already there."""
    if _installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError("npm not found on PATH")
    verb = "ci" if (NODERED_DIR / "package-lock.json").is_file() else "install"
    _say(f"installing Node-RED into {NODERED_DIR} (npm {verb}) ...")
    done = subprocess.run([npm, verb, "--no-audit", "--no-fund"], cwd=NODERED_DIR, capture_output=True,
                          text=True, check=False, timeout=600)
    if done.returncode != 0 or not _installed():
        raise BenchError(f"npm {verb} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def _node_version() -> str:
    node = shutil.which("node")
    if node is None:
        raise BenchError("node not found on PATH")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    return out.strip()


def available() -> bool:
    """Tell whether Node-RED can run here: node and npm present and the install works.

    Any failure prints its reason to stderr and returns False.
    """
    try:
        version = _node_version()
        major = int(version.lstrip("v").split(".", 1)[0])
        if major < MIN_NODE_MAJOR:
            raise BenchError(f"node {version} is too old (Node-RED 4 needs {MIN_NODE_MAJOR}+)")
        if shutil.which("npm") is None:
            raise BenchError("npm not found on PATH")
        _install()
    except (BenchError, OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"bench.nodered_peer: Node-RED unavailable: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def _nodered_version() -> str:
    try:
        doc = json.loads((NODERED_DIR / "node_modules" / "node-red" / "package.json").read_text())
        return str(doc.get("version", "?"))
    except (OSError, ValueError):
        return "?"


# -- the Node-RED process ---------------------------------------------------------------------------
# Start-up warnings that say nothing about the measurement.
_BENIGN: Final = ("Using unencrypted credentials", "Projects disabled")


class NodeRed:
    """Node-RED as a child process: own userDir in a temp dir, admin HTTP on a free port, log read."""

    def __init__(self, *, broker_url: str, dsn: str, ward: str, client_id: str) -> None:
        node = shutil.which("node")
        if node is None:
            raise BenchError("node not found on PATH")
        self.userdir = Path(tempfile.mkdtemp(prefix="monitorme-nodered-"))
        shutil.copy(FLOWS_JSON, self.userdir / "flows.json")
        self.port = free_port()
        env = dict(os.environ)
        env.update({
            "NR_UI_PORT": str(self.port),
            "NR_FLOW_FILE": str(self.userdir / "flows.json"),
            "NR_MQTT_URL": broker_url,
            "NR_TOPIC": f"monitorme/{ward}/+/+",
            "NR_CLIENT_ID": client_id,
            "NR_PG_URL": dsn,
            "NR_TABLE": TABLE,
        })
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [node, str(RED_JS), "--userDir", str(self.userdir), "--settings", str(SETTINGS_JS),
             "--port", str(self.port)],
            cwd=NODERED_DIR, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.connected = threading.Event()
        self.connected_at = 0.0
        self.tail: deque[str] = deque(maxlen=60)
        self.problems: list[str] = []
        self._reader = threading.Thread(target=self._read, name="bench.nodered_log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stdout
        if stream is None:
            return
        with stream:  # closed when Node-RED's output ends, not left to the garbage collector
            self._read_lines(stream)

    def _read_lines(self, stream: Any) -> None:
        for line in stream:
            seen = time.perf_counter()
            text = line.rstrip()
            self.tail.append(text)
            if "Connected to broker" in text and not self.connected.is_set():
                self.connected_at = seen
                self.connected.set()
            if ("[error]" in text or "[warn]" in text) and not any(b in text for b in _BENIGN):
                self.problems.append(text)

    def log_tail(self) -> str:
        return "\n".join(self.tail)

    def wait_connected(self, timeout_s: float = CONNECT_TIMEOUT_S) -> float:
        """Wait for the 'Connected to broker' log line; when it was read (perf_counter)."""
        deadline = time.monotonic() + timeout_s
        while not self.connected.wait(0.1):
            if _STOP.is_set():
                raise BenchError("interrupted while waiting for Node-RED to connect")
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"Node-RED did not connect to the broker (exit code {self.proc.poll()}); "
                                 f"log tail:\n{self.log_tail()}")
        return self.connected_at

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def peak_rss(self) -> int:
        """VmHWM of the node process, bytes; 0 where unknown."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (Node-RED closes its flows and disconnects), SIGKILL after ``timeout_s``; exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._reader.join(5)
        finally:
            shutil.rmtree(self.userdir, ignore_errors=True)
        return self.proc.returncode


# -- database ----------------------------------------------------------------------------------------
_DDL: Final = (
    f"DROP TABLE IF EXISTS {TABLE}; "
    f"CREATE TABLE {TABLE} (ward text, patient text, vital text, ts timestamptz, value jsonb, "
    "stored_at timestamptz DEFAULT clock_timestamp())"
)


async def _fetchval(dsn: str, sql: str, *args: object) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def _count(dsn: str) -> int:
    return int(asyncio.run(_fetchval(dsn, f"SELECT count(*) FROM {TABLE}")))


def _wait_rows(dsn: str, nr: NodeRed, expected: int, timeout_s: float) -> int:
    """Poll until the table holds ``expected`` rows; the count (raises on timeout or a dead Node-RED)."""

    async def run() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                count = int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))
                if count >= expected:
                    return count
                if _STOP.is_set():
                    raise BenchError("interrupted")
                if nr.proc.poll() is not None:
                    raise BenchError(f"Node-RED exited ({nr.proc.returncode}) at {count} of {expected} rows; "
                                     f"log tail:\n{nr.log_tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"Node-RED stored {count} of {expected} rows in {timeout_s:g} s; "
                                     f"log tail:\n{nr.log_tail()}")
                await asyncio.sleep(POLL_S)
        finally:
            await conn.close()

    return asyncio.run(run())


async def _postmaster(dsn: str) -> Any:
    """The server's postmaster as a psutil.Process: the parent of this connection's backend."""
    conn = await asyncpg.connect(dsn)
    try:
        pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return psutil.Process(pid).parent()
    finally:
        await conn.close()


class PgCpu(threading.Thread):
    """Best-effort CPU of one database's client backends on a local server, polled every 0.2 s.

    Backends are the postmaster's children whose title names the database; ones that start inside
    the span count from zero, ones that exit lose their last < 0.2 s. None where the server's
    processes cannot be seen (another host or container).
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(name="bench.nodered_pgcpu", daemon=True)
        self.database = urlsplit(dsn).path.lstrip("/")
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._counting = False
        self.postmaster: Any = None
        with contextlib.suppress(psutil.Error, OSError, asyncpg.PostgresError):
            self.postmaster = asyncio.run(_postmaster(dsn))

    def _poll(self) -> None:
        if self.postmaster is None:
            return
        marker = f" {self.database} "
        try:
            children = self.postmaster.children()
        except psutil.Error:
            return
        for child in children:
            with contextlib.suppress(psutil.Error):
                if marker not in " ".join(child.cmdline()) + " ":
                    continue
                t = child.cpu_times()
                cpu = float(t.user + t.system)
                with self._lock:
                    if child.pid not in self._first:
                        self._first[child.pid] = 0.0 if self._counting else cpu
                    self._last[child.pid] = cpu

    def run(self) -> None:
        while not self._halt.wait(0.2):
            self._poll()

    def begin(self) -> None:
        """Start counting: backends alive now count from their current CPU time."""
        with self._lock:
            self._first.clear()
            self._last.clear()
            self._counting = False
        self._poll()
        with self._lock:
            self._counting = True

    def end(self) -> float | None:
        """CPU seconds of the backends since ``begin()``; stops the thread."""
        self._poll()
        self._halt.set()
        if self.postmaster is None:
            return None
        with self._lock:
            return sum(self._last[p] - self._first[p] for p in self._last)


def _probe(broker_url: str, dsn: str, ward: str, nr: NodeRed, timeout_s: float = 30.0) -> None:
    """Readings through the whole flow until one is stored (subscription and INSERT path work), then truncate.

    Node-RED logs 'Connected to broker' before it sends its SUBSCRIBE, so a probe can arrive before
    the subscription: one is published every second until a row shows up.
    """
    deadline = time.monotonic() + timeout_s
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        now = int(time.time() * 1000)
        msg = SimMessage(topic=f"monitorme/{ward}/probe/heart_rate",
                         payload=json.dumps({"ts": now, "value": 70, "seq": seq, "device": "probe"}).encode(),
                         ts_ms=now, patient="probe", vital="heart_rate")
        if publish([msg], broker_url, qos=1, ack_timeout_s=30.0).acked != 1:
            raise BenchError("probe reading not acknowledged by the broker")
        with contextlib.suppress(BenchError):
            _wait_rows(dsn, nr, 1, 1.0)
            time.sleep(1.0)  # let a probe still in the flow land before the table is emptied
            asyncio.run(_execute(dsn, f"TRUNCATE {TABLE}"))
            return
        if nr.proc.poll() is not None or _STOP.is_set():
            break
    raise BenchError(f"no probe reading stored in {timeout_s:g} s; log tail:\n{nr.log_tail()}")


def _clear_session(broker_url: str, client_id: str) -> None:
    """A clean connect with the flow's client id removes its persistent session from the broker."""
    with contextlib.suppress(BenchError, OSError):
        cleaner = _PahoSubscriber(broker_url, client_id, v5=False)
        cleaner.close(cleaner.connect(clean=True))


def _client_id(ward: str) -> str:
    return f"bench-nodered-{ward}-{secrets.token_hex(3)}"


# -- drain -------------------------------------------------------------------------------------------
def drain(broker_url: str, dsn: str, ward: str, messages: Sequence[SimMessage]) -> dict[str, Any]:
    """Time the flow draining ``messages`` queued in the broker for its persistent session.

    Persistent sessions work in Node-RED 4.1 (clean session off, fixed client id, and the broker
    config's ``autoUnsubscribe`` off so a normal stop does not unsubscribe), so this is the same
    procedure as MonitorMe's drain in bench.ingest: create the table; start Node-RED, wait for its
    broker connection and one probe reading stored (subscription in place); stop it with SIGTERM;
    publish the backlog with ``bench.ingest._publish_all`` while it is away; start it again and time
    from reading its 'Connected to broker' log line until ``SELECT count(*)`` (polled every 100 ms)
    equals ``len(messages)``. The session is removed from the broker afterwards.

    Returns:
        rows_per_s, rows, seconds, cpu_s_per_1000, peak_rss_mb and details (see SCHEMA).
    """
    total = len(messages)
    asyncio.run(_execute(dsn, _DDL))
    client_id = _client_id(ward)
    collected = Collected()
    try:
        first = NodeRed(broker_url=broker_url, dsn=dsn, ward=ward, client_id=client_id)
        try:
            first.wait_connected()
            _probe(broker_url, dsn, ward, first)
        finally:
            code = first.stop()
        if code != 0:
            raise BenchError(f"Node-RED (session run) exited with {code}; log tail:\n{first.log_tail()}")
        _say(f"nodered drain: session created; publishing {total:,} messages ...")
        _publish_all(messages, broker_url, collected)
        _say(f"nodered drain: published at {collected.publish_rates[-1]:,.0f} msg/s; starting Node-RED")
        nr = NodeRed(broker_url=broker_url, dsn=dsn, ward=ward, client_id=client_id)
        try:
            pg = PgCpu(dsn)
            pg.start()
            connected = nr.wait_connected()
            cpu0 = nr.cpu_s()
            pg.begin()
            _wait_rows(dsn, nr, total, max(60.0, total / 500))
            ended = time.perf_counter()
            cpu = nr.cpu_s() - cpu0
            pg_cpu = pg.end()
            time.sleep(1.0)
            final = _count(dsn)
            peak = nr.peak_rss()
        finally:
            code = nr.stop()
    finally:
        _clear_session(broker_url, client_id)
    seconds = ended - connected
    problems = [f"exit code {code} after SIGTERM"] if code != 0 else []
    if final != total:
        problems.append(f"{final} rows stored for {total} messages")
    problems += nr.problems[:10]
    return {
        "rows_per_s": round(total / seconds, 1),
        "rows": total,
        "seconds": round(seconds, 3),
        "cpu_s_per_1000": round(1000 * cpu / total, 4),
        "peak_rss_mb": round(peak / 2**20, 1),
        "cpu_s": round(cpu, 3),
        "node_cpu_share": round(cpu / seconds, 3),
        "pg_cpu_share": round(pg_cpu / seconds, 3) if pg_cpu is not None else None,
        "startup_to_connected_s": round(connected - nr.started, 3),
        "rows_after_1s_more": final,
        "publish_msg_per_s": round(collected.publish_rates[-1], 1),
        "exit_code": code,
        "problems": problems,
    }


# -- latency -----------------------------------------------------------------------------------------
def _with_ts(payload: bytes, ts_ms: int) -> bytes:
    """``payload`` with its ``"ts"`` replaced by ``ts_ms`` (fast path for the simulator's layout)."""
    if payload.startswith(b'{"ts":'):
        end = payload.find(b",", 6)
        if end > 6:
            return b'{"ts":' + str(ts_ms).encode() + payload[end:]
    doc = json.loads(payload)
    doc["ts"] = ts_ms
    return json.dumps(doc, separators=(",", ":")).encode()


class LivePublisher(threading.Thread):
    """Publishes pre-generated messages paced by event time in real time, ts = publish wall time."""

    def __init__(self, broker_url: str, messages: Sequence[SimMessage], warmup_s: float) -> None:
        super().__init__(name="bench.nodered_load", daemon=True)
        self.broker = parse_url(broker_url)
        self.messages = messages
        self.warmup_ms = int(warmup_s * 1000)
        self.sent = 0
        self.acked = 0
        self.max_lag_s = 0.0
        self.warm = threading.Event()
        self.warm_epoch_ms = 0
        self.started_mono = 0.0
        self.ended_mono = 0.0
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            self.acked += 1

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the caller
            self.error = exc
            self.warm.set()

    def _run(self) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-nodered-load-{secrets.token_hex(3)}",
                             protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_publish = self._on_publish
        client.connect(self.broker.host, self.broker.port, keepalive=60)
        client.loop_start()
        try:
            deadline = time.monotonic() + 30
            while not client.is_connected():
                if time.monotonic() > deadline:
                    raise BenchError("load publisher: no CONNACK in 30 s")
                time.sleep(0.01)
            first_ts = self.messages[0].ts_ms
            self.started_mono = t0 = time.monotonic()
            for m in self.messages:
                if _STOP.is_set():
                    break
                lead = t0 + (m.ts_ms - first_ts) / 1000.0 - time.monotonic()
                if lead > 0.002:
                    time.sleep(lead)
                elif lead < 0:
                    self.max_lag_s = max(self.max_lag_s, -lead)
                now_ms = time.time_ns() // 1_000_000
                if not self.warm.is_set() and m.ts_ms - first_ts >= self.warmup_ms:
                    self.warm_epoch_ms = now_ms
                    self.warm.set()
                client.publish(m.topic, _with_ts(m.payload, now_ms), qos=1)
                self.sent += 1
            self.ended_mono = time.monotonic()
            deadline = time.monotonic() + 30
            while self.acked < self.sent and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            client.disconnect()
            client.loop_stop()


async def _latency_stats(dsn: str, since_ms: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99, max(d) AS max "
            f"FROM (SELECT extract(epoch FROM stored_at - ts) * 1000 AS d FROM {TABLE} "
            "WHERE ts >= to_timestamp($1::double precision / 1000)) s", since_ms)
        return {k: float(row[k] or 0.0) for k in ("n", "p50", "p99", "max")}
    finally:
        await conn.close()


def latency(broker_url: str, dsn: str, ward: str, patients: int = 500, seconds: float = 30.0) -> dict[str, Any]:
    """Publish -> row latency and CPU at hospital load, the flow running while the ward publishes.

    The ward's ``generate_ward(patients, WARMUP_S + seconds)`` mix (ECG included, ≈ 4.22 messages/s
    per patient) is published live by a paho thread paced in real time, each payload's ``ts`` set to
    its publish wall time (ms). Readings published after the first ``WARMUP_S`` seconds (the start,
    when every device reports at once) are measured: ``stored_at`` (clock_timestamp() in the INSERT)
    minus ``ts``. The node process's CPU share of one core is taken over the same span.
    """
    asyncio.run(_execute(dsn, _DDL))
    start_ms = int(time.time() * 1000)
    messages = list(generate_ward(ward, patients, start_ms, WARMUP_S + seconds))
    client_id = _client_id(ward)
    try:
        nr = NodeRed(broker_url=broker_url, dsn=dsn, ward=ward, client_id=client_id)
        try:
            nr.wait_connected()
            _probe(broker_url, dsn, ward, nr)
            _say(f"nodered latency: publishing {len(messages):,} messages live over {WARMUP_S + seconds:g} s ...")
            pub = LivePublisher(broker_url, messages, WARMUP_S)
            pub.start()
            pub.warm.wait()
            if pub.error is not None:
                raise BenchError(f"load publisher failed: {pub.error!r}")
            pg = PgCpu(dsn)
            pg.start()
            wall0, cpu0 = time.perf_counter(), nr.cpu_s()
            pg.begin()
            while pub.is_alive() and pub.ended_mono == 0.0:
                pub.join(0.1)
            wall1, cpu1 = time.perf_counter(), nr.cpu_s()
            pg_cpu = pg.end()
            pub.join(60)
            if pub.error is not None:
                raise BenchError(f"load publisher failed: {pub.error!r}")
            stored = _wait_rows(dsn, nr, pub.acked, 30.0) if pub.acked else 0
            time.sleep(1.0)
            stored = _count(dsn)
            peak = nr.peak_rss()
        finally:
            code = nr.stop()
    finally:
        _clear_session(broker_url, client_id)
    stats = asyncio.run(_latency_stats(dsn, pub.warm_epoch_ms))
    wall = wall1 - wall0
    problems = [f"exit code {code} after SIGTERM"] if code != 0 else []
    if pub.acked != pub.sent:
        problems.append(f"publisher: {pub.acked} of {pub.sent} acknowledged")
    if stored != pub.acked:
        problems.append(f"{stored} rows stored for {pub.acked} published")
    problems += nr.problems[:10]
    publish_s = pub.ended_mono - pub.started_mono
    return {
        "p50_ms": round(stats["p50"], 1),
        "p99_ms": round(stats["p99"], 1),
        "max_ms": round(stats["max"], 1),
        "measured_rows": int(stats["n"]),
        "node_cpu_share": round((cpu1 - cpu0) / wall, 3) if wall > 0 else None,
        "pg_cpu_share": round(pg_cpu / wall, 3) if wall > 0 and pg_cpu is not None else None,
        "peak_rss_mb": round(peak / 2**20, 1),
        "patients": patients,
        "seconds": seconds,
        "warmup_s": WARMUP_S,
        "published": pub.sent,
        "publish_msg_per_s": round(pub.sent / publish_s, 1) if publish_s > 0 else None,
        "publisher_max_lag_ms": round(1000 * pub.max_lag_s, 1),
        "stored": stored,
        "lost": pub.acked - stored,
        "exit_code": code,
        "problems": problems,
    }


# -- stand-alone -------------------------------------------------------------------------------------
def _medians(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per key: the median of the runs' numbers, every run's problems, else the first run's value."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if key == "problems":
            out[key] = [p for r in runs for p in r.get("problems", [])]
        elif len(numbers) == len(values):
            # Counts stay whole numbers: the lower median of an even number of runs.
            median = (statistics.median_low(numbers) if all(isinstance(v, int) for v in numbers)
                      else statistics.median(numbers))
            out[key] = round(median, 4) if isinstance(median, float) else median
        else:
            out[key] = first
    return out


def run(patients: int, seconds: float, *, runs: int = 1, do_drain: bool = True,
        do_latency: bool = True) -> dict[str, Any]:
    """Broker + database for the duration, then ``drain`` and/or ``latency`` ``runs`` times; the report.

    ``drain`` and ``latency`` in the report are per-key medians over the runs; every run is kept in
    ``drain_runs`` / ``latency_runs``.
    """
    if not available():
        raise BenchError("Node-RED is not available here (reason above)")
    report: dict[str, Any] = {"schema": SCHEMA, "patients": patients, "simulated_seconds": seconds, "runs": runs,
                              "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(MosquittoBroker())
        admin = stack.enter_context(_admin_dsn())
        db = f"monitorme_bench_{secrets.token_hex(4)}"
        asyncio.run(_execute(admin, f'CREATE DATABASE "{db}"'))
        stack.callback(lambda: asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')))
        dsn = with_database(admin, db)
        pg_version = asyncio.run(_server_version(admin))
        _say(f"broker {broker.url}, database {db}")
        base: list[SimMessage] = []
        if do_drain:
            start_ms = int(time.time() * 1000) - int(seconds * 1000) - 60_000
            base = list(generate_ward(BASE_WARD, patients, start_ms, seconds))
            _say(f"nodered drain: backlog {len(base):,} messages ({sum(m.vital == 'ecg' for m in base):,} ECG)")
            report["messages"] = len(base)
        drains: list[dict[str, Any]] = []
        lats: list[dict[str, Any]] = []
        for i in range(1, runs + 1):
            tag = secrets.token_hex(2)
            if do_drain:
                ward = f"nr-{tag}"
                drains.append(drain(broker.url, dsn, ward, _for_ward(base, ward)))
                _say(f"run {i}: nodered drain {drains[-1]['rows_per_s']:,.0f} rows/s")
            if do_latency:
                lats.append(latency(broker.url, dsn, f"nrl-{tag}", patients, seconds))
                _say(f"run {i}: nodered latency p50 {lats[-1]['p50_ms']} ms, p99 {lats[-1]['p99_ms']} ms, "
                     f"node {lats[-1]['node_cpu_share']} core")
        if drains:
            report["drain"] = _medians(drains)
            report["drain_runs"] = drains
        if lats:
            report["latency"] = _medians(lats)
            report["latency_runs"] = lats
    report.update({
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "node": _node_version(),
            "node_red": _nodered_version(),
            "mosquitto": _mosquitto_version(),
            "postgresql": pg_version,
        },
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "source": _source_tree(),
        "reference": {"source": "/work/shared/PERF.md", **PERF_REFERENCE},
    })
    return report


def _share(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of a report."""
    m = report["machine"]
    lines = [
        f"Node-RED {m['node_red']} (node {m['node']}) batched flow, {report['patients']} patients; "
        f"{m['nproc']} cores, Mosquitto {m['mosquitto']}, PostgreSQL {m['postgresql']}; "
        f"medians of {report['runs']} run(s); load average {report['loadavg_at_start'][0]} -> "
        f"{report['loadavg_at_end'][0]}",
        "",
        f"{'measurement':<44} {'here':>14}  PERF.md",
        "-" * 80,
    ]
    if "drain" in report:
        d = report["drain"]
        lines += [
            f"{'drain ' + format(report['messages'], ',') + ' queued messages':<44} "
            f"{d['rows_per_s']:>9,.0f} rows/s  13.1k rows/s",
            f"{'  seconds / CPU-s per 1,000 rows':<44} {d['seconds']:>7.2f} s / {d['cpu_s_per_1000']:.3f}",
            f"{'  CPU share: node / PostgreSQL backends':<44} "
            f"{d['node_cpu_share']:>7.2f} / {_share(d['pg_cpu_share'])}",
            f"{'  peak RSS of node':<44} {d['peak_rss_mb']:>10.0f} MiB",
        ]
    if "latency" in report:
        lat = report["latency"]
        lines += [
            f"{'live, ' + format(lat['publish_msg_per_s'] or 0, ',.0f') + ' msg/s: publish -> row p50':<44} "
            f"{lat['p50_ms']:>11.1f} ms  59 ms",
            f"{'  p99':<44} {lat['p99_ms']:>11.1f} ms  116 ms",
            f"{'  max':<44} {lat['max_ms']:>11.1f} ms",
            f"{'  node CPU (share of one core)':<44} {lat['node_cpu_share']:>14.2f}  0.38 core",
            f"{'  PostgreSQL backends CPU':<44} {_share(lat['pg_cpu_share']):>14}",
            f"{'  rows measured / lost':<44} {lat['measured_rows']:>8,} / {lat['lost']}",
        ]
    for part in ("drain", "latency"):
        for problem in report.get(part, {}).get("problems", []):
            lines.append(f"PROBLEM ({part}): {problem}")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.nodered_peer", description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=500, help="simulated patients (default 500)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="simulated seconds of backlog, and seconds measured live (default 30)")
    parser.add_argument("--json", default="bench/results/nodered.json",
                        help="write the report here ('' to skip; default bench/results/nodered.json)")
    parser.add_argument("--runs", type=int, default=1, help="repeat drain and latency; medians are reported")
    parser.add_argument("--no-drain", action="store_true", help="skip the backlog drain")
    parser.add_argument("--no-latency", action="store_true", help="skip the live latency run")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.seconds <= 0 or args.runs < 1:
        parser.error("--patients, --seconds and --runs must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        _STOP.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        report = run(args.patients, args.seconds, runs=args.runs, do_drain=not args.no_drain,
                     do_latency=not args.no_latency)
    except BenchError as exc:
        _say(f"bench.nodered_peer: {exc}")
        return 130 if _STOP.is_set() else 1
    except KeyboardInterrupt:
        _say("bench.nodered_peer: interrupted; Node-RED and the broker are stopped and the database dropped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {path}")
    problems = [p for part in ("drain", "latency") for p in report.get(part, {}).get("problems", [])]
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

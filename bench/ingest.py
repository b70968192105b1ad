"""Measure in one run, on one broker and one PostgreSQL server, how fast a QoS 1 backlog drains.

Every figure is taken beside its limits, on the same private no-loss Mosquitto and the same
PostgreSQL server (a fresh database created and dropped here; embedded pgserver if 5432 is closed):

1. bare aiomqtt subscriber (uvloop), persistent session, MQTT 3.1.1 and MQTT 5: only counts;
2. bare paho subscriber (its own network thread), the same two ways: only counts;
3. raw asyncpg ``copy_records_to_table`` of the daemon's own row tuples, 10k batches, plain table;
4. ``python -m monitorme run`` as a subprocess, QoS 1 acknowledged after commit: time from its
   ``mqtt_connected`` log line until ``SELECT count(*) FROM readings`` holds the whole backlog.

Each backlog is ``generate_ward(N patients, S simulated seconds)`` (≈ 4.22·N·S messages, ECG
included), published with ``monitorme.sim.publisher.publish`` while the subscriber is away.

Usage::

    python -m bench.ingest [--patients 500] [--seconds 30] [--runs 1] [--json bench/results/ingest.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import queue
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, Final

import aiomqtt
import asyncpg
import paho.mqtt.client as mqtt
import psutil
import uvloop
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from monitorme.adapters.pg_codecs import init_connection
from monitorme.adapters.pg_writer import READING_COLUMNS, reading_record
from monitorme.config import load_pipelines
from monitorme.core.engine import Engine, EngineConfig
from monitorme.core.model import RawMessage
from monitorme.demo.services import EmbeddedPostgres, MosquittoBroker, free_port, port_open, with_database
from monitorme.sim.model import SimMessage, generate_ward
from monitorme.sim.publisher import PublishStats, parse_url, publish

REPO: Final = Path(__file__).resolve().parent.parent
BASE_WARD: Final = "bench"
RECEIVE_MAXIMUM: Final = 20_000  # as the daemon asks for
SESSION_EXPIRY_S: Final = 86_400
COPY_BATCH: Final = 10_000
POLL_S: Final = 0.1
SYSTEM_PG_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"

# PERF.md, same machine class: the figures MonitorMe is measured against.
PERF_REFERENCE: Final[dict[str, float]] = {
    "bare_aiomqtt_qos1": 7_300.0,
    "bare_paho_qos1": 10_800.0,
    "copy_10k_batches": 393_000.0,
    "nodered_batched_backlog_drain": 13_100.0,
}

# The order of the table and of "results" in the JSON; label, unit, PERF.md figure beside it.
MEASUREMENTS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("aiomqtt_v311", "bare aiomqtt drain, MQTT 3.1.1", "msg/s", "7.3k (bare aiomqtt, QoS 1)"),
    ("aiomqtt_v5", "bare aiomqtt drain, MQTT 5, rx max 20k", "msg/s", "7.3k (bare aiomqtt, QoS 1)"),
    ("paho_v311", "bare paho drain, MQTT 3.1.1", "msg/s", "10.8k (bare paho, QoS 1)"),
    ("paho_v5", "bare paho drain, MQTT 5, rx max 20k", "msg/s", "10.8k (bare paho, QoS 1)"),
    ("wire_v5", "bare MonitorMe wire client drain, MQTT 5", "msg/s", "10.8k (bare paho, QoS 1)"),
    ("copy", "raw asyncpg COPY, 10k batches", "rows/s", "393k (COPY, 10k batches)"),
    ("monitorme", "MonitorMe end to end, ack after commit", "rows/s", "13.1k (Node-RED batched drain)"),
)

SCHEMA: Final = (
    "bench/ingest.py results: backlog drain rates measured in one run on one private Mosquitto "
    "(no-loss config) and one PostgreSQL server. "
    "date: UTC time the run finished. "
    "machine: nproc (os.cpu_count), cpus_usable (scheduler affinity), cpu_model, python, platform, "
    "mosquitto and postgresql server versions, client library versions. "
    "patients, simulated_seconds: the backlog is generate_ward(patients, simulated_seconds), scenario "
    "'normal', the hospital mix with ECG; messages: its size (every measurement uses this many); "
    "runs: how many times the whole sequence ran (values are per run, in order; 'median' over them). "
    "publish: the backlog publisher (paho, QoS 1, waits for every PUBACK), msg/s, informational. "
    "results.<name>.rates: messages (msg/s) or rows (rows/s) per second; .seconds: the timed span; "
    "aiomqtt_v311 / aiomqtt_v5: bare aiomqtt 2.x subscriber on uvloop, QoS 1, persistent session "
    "(v5: clean_start False, session expiry 24 h, receive maximum 20,000), timed from the start of "
    "the reconnect to the last message received, only counting (async for m in client.messages); "
    "paho_v311 / paho_v5: the same with a bare paho client (loop_start thread, on_message counts); "
    "copy: asyncpg copy_records_to_table of the daemon's own row tuples (reading_record) into a "
    "plain table with the readings columns and no index, batches of 10,000, one connection; "
    "monitorme: python -m monitorme run --insecure-no-auth as a subprocess (uvloop, MQTT 5, QoS 1 "
    "acked after commit), timed from the 'ts' of its mqtt_connected log line (so its connect and "
    "subscribe are not counted) until SELECT count(*) FROM readings, polled every 100 ms, equals "
    "messages; .cpu_s_per_1000: daemon user+sys CPU seconds over the drain per 1,000 readings; "
    ".peak_rss_mb: the daemon's VmHWM (peak resident set, whole life) in MiB; .exit_codes: after "
    "SIGTERM (0 expected); .store_batches and .rows_per_batch from its /metrics; "
    ".duplicates: monitorme_duplicates_total. "
    "ratios: MonitorMe median divided by each limit's median measured here, and by PERF.md's "
    "figures in 'reference' (msg/s or rows/s; Node-RED batched = 60k backlog drained into "
    "PostgreSQL by a Node-RED flow joining 500 messages into one INSERT). "
    "source: the git commit measured and how many tracked files differed from it. "
    "problems: anything that went wrong (empty on a clean run)."
)

log = logging.getLogger("bench.ingest")
# Set on SIGTERM: worker threads (publisher, log waits) give up so the cleanup is not kept waiting.
_STOP = threading.Event()


class BenchError(RuntimeError):
    """A measurement could not be completed (lost messages, a daemon that would not start...)."""


@dataclass(frozen=True, slots=True)
class Drain:
    """How many messages (or rows) went through in how many seconds."""

    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class DaemonDrain:
    """The end-to-end drain plus what the daemon process spent on it."""

    drain: Drain
    cpu_s: float
    peak_rss_bytes: int
    exit_code: int
    metrics: dict[str, float]
    connect_seen_after_s: float  # how late the bench read the mqtt_connected line


@dataclass(slots=True)
class Collected:
    """Every run's numbers, by measurement name."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    publish_rates: list[float] = field(default_factory=list)
    daemon: list[DaemonDrain] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, drain: Drain) -> None:
        self.rates.setdefault(name, []).append(drain.rate)
        self.seconds.setdefault(name, []).append(drain.seconds)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _drain_timeout(total: int) -> float:
    """Give up on a drain slower than 500 msg/s (a tenth of the slowest limit), 60 s at least."""
    return max(60.0, total / 500)


def _for_ward(messages: Sequence[SimMessage], ward: str) -> list[SimMessage]:
    """The same backlog on another ward's topics (payloads are shared, not copied)."""
    old = f"monitorme/{BASE_WARD}/"
    new = f"monitorme/{ward}/"
    return [replace(m, topic=new + m.topic[len(old):]) for m in messages]


def _publish_all(messages: Sequence[SimMessage], url: str, collected: Collected) -> PublishStats:
    stats = publish(messages, url, qos=1, ack_timeout_s=120.0, stop=_STOP)
    if stats.sent != len(messages) or stats.acked != stats.sent:
        raise BenchError(f"publisher: {stats.acked} of {len(messages)} messages acknowledged by the broker")
    collected.publish_rates.append(stats.rate)
    return stats


# -- 1. bare aiomqtt ---------------------------------------------------------------------------------
def _aiomqtt_client(url: str, client_id: str, *, v5: bool, clean: bool) -> aiomqtt.Client:
    broker = parse_url(url)
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if clean else SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        return aiomqtt.Client(
            broker.host, broker.port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean, properties=props, timeout=30,
        )
    return aiomqtt.Client(
        broker.host, broker.port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=clean, timeout=30,
    )


async def aiomqtt_drain(url: str, ward: str, messages: Sequence[SimMessage], *, v5: bool,
                        collected: Collected) -> Drain:
    """Create a persistent session, publish the backlog while away, time the reconnect's drain."""
    client_id = f"bench-aiomqtt-{'v5' if v5 else 'v311'}-{secrets.token_hex(3)}"
    async with _aiomqtt_client(url, client_id, v5=v5, clean=False) as client:
        await client.subscribe(f"monitorme/{ward}/#", qos=1)
    await asyncio.to_thread(_publish_all, messages, url, collected)
    total = len(messages)
    received = 0
    try:
        started = time.perf_counter()
        async with _aiomqtt_client(url, client_id, v5=v5, clean=False) as client:
            async with asyncio.timeout(_drain_timeout(total)):
                async for _message in client.messages:
                    received += 1
                    if received == total:
                        break
            ended = time.perf_counter()
    except TimeoutError:
        raise BenchError(f"aiomqtt drain: {received} of {total} messages arrived in time") from None
    finally:
        # A clean connect ends the persistent session, so later backlogs are not queued for it.
        async with _aiomqtt_client(url, client_id, v5=v5, clean=True):
            pass
    return Drain(total, ended - started)


# -- 1b. our own wire protocol, bare --------------------------------------------------------------------
async def wire_sessions(url: str, wards: Sequence[str], receive_maximum: int = RECEIVE_MAXIMUM) -> None:
    """One persistent session per ward (client id ``bench-wire-{ward}``), subscribed, then left."""
    from monitorme.adapters.mqtt_wire import ConnectOptions, MqttConnection

    broker = parse_url(url)
    for ward in wards:
        options = ConnectOptions(f"bench-wire-{ward}", session_expiry_s=SESSION_EXPIRY_S,
                                 receive_maximum=receive_maximum)
        connection = await MqttConnection.open(broker.host, broker.port, options, lambda *_: None)
        await connection.subscribe(f"monitorme/{ward}/#", 1)
        await connection.close()


async def wire_reconnect_drain(url: str, wards: Sequence[str], total: int,
                               receive_maximum: int = RECEIVE_MAXIMUM) -> Drain:
    """Reconnect every ward's session at once; time until ``total`` messages arrived (acknowledged
    once per socket read, on receipt), then end the sessions."""
    from monitorme.adapters.mqtt_wire import ConnectOptions, MqttConnection

    broker = parse_url(url)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    received = 0
    conns: list[MqttConnection] = []

    def counter(i: int) -> Callable[[str, bytes, int, int, int], None]:
        mids: list[int] = []

        def flush() -> None:
            conns[i].ack(mids)
            mids.clear()

        def on_publish(_topic: str, _payload: bytes, _qos: int, mid: int, _at: int) -> None:
            nonlocal received
            received += 1
            if not mids:
                loop.call_soon(flush)
            mids.append(mid)
            if received == total and not done.done():
                done.set_result(time.perf_counter())

        return on_publish

    def options(ward: str, *, clean: bool = False) -> ConnectOptions:
        return ConnectOptions(f"bench-wire-{ward}", clean_start=clean,
                              session_expiry_s=0 if clean else SESSION_EXPIRY_S, receive_maximum=receive_maximum)

    started = time.perf_counter()
    try:
        for i, ward in enumerate(wards):
            conns.append(await MqttConnection.open(broker.host, broker.port, options(ward), counter(i)))
        async with asyncio.timeout(_drain_timeout(total)):
            ended = await done
    except TimeoutError:
        raise BenchError(f"wire drain: {received} of {total} messages arrived in time") from None
    finally:
        for c in conns:
            await c.close()
        for ward in wards:  # a clean connect ends the session, so later backlogs are not queued for it
            clean = await MqttConnection.open(broker.host, broker.port, options(ward, clean=True), lambda *_: None)
            await clean.close()
    return Drain(total, ended - started)


async def wire_drain(url: str, ward: str, messages: Sequence[SimMessage], *, collected: Collected) -> Drain:
    """``monitorme.adapters.mqtt_wire`` alone: count and acknowledge (once per read) what arrives."""
    await wire_sessions(url, [ward])
    await asyncio.to_thread(_publish_all, messages, url, collected)
    return await wire_reconnect_drain(url, [ward], len(messages))


# -- 2. bare paho --------------------------------------------------------------------------------------
class _PahoSubscriber:
    """A plain paho client with its own network thread; ``on_message`` only counts."""

    def __init__(self, url: str, client_id: str, *, v5: bool, expect: int = 0) -> None:
        self.broker = parse_url(url)
        self.v5 = v5
        self.expect = expect
        self.received = 0
        self.ended = 0.0
        self.done = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._failure: list[str] = []
        self.client_id = client_id

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason_code: ReasonCode, _p: Any) -> None:
        if reason_code.is_failure:
            self._failure.append(str(reason_code))
        self._connected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
        self.received += 1
        if self.received == self.expect:
            self.ended = time.perf_counter()
            self.done.set()

    def connect(self, *, clean: bool) -> mqtt.Client:
        """Connect and start the network thread; the caller must ``close()`` it."""
        if self.v5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=mqtt.MQTTv311, clean_session=clean)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._connected.clear()
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0 if clean else SESSION_EXPIRY_S
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            client.connect(self.broker.host, self.broker.port, keepalive=60, clean_start=clean, properties=props)
        else:
            client.connect(self.broker.host, self.broker.port, keepalive=60)
        client.loop_start()
        if not self._connected.wait(30) or self._failure:
            self.close(client)
            raise BenchError(f"paho connect failed: {self._failure or 'no CONNACK in 30 s'}")
        return client

    def subscribe(self, client: mqtt.Client, topic: str) -> None:
        self._subscribed.clear()
        client.subscribe(topic, qos=1)
        if not self._subscribed.wait(30):
            raise BenchError("paho: no SUBACK in 30 s")

    @staticmethod
    def close(client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()


def paho_drain(url: str, ward: str, messages: Sequence[SimMessage], *, v5: bool, collected: Collected) -> Drain:
    """Like ``aiomqtt_drain`` with a bare paho client."""
    client_id = f"bench-paho-{'v5' if v5 else 'v311'}-{secrets.token_hex(3)}"
    total = len(messages)
    sub = _PahoSubscriber(url, client_id, v5=v5, expect=total)
    client = sub.connect(clean=False)
    try:
        sub.subscribe(client, f"monitorme/{ward}/#")
    finally:
        sub.close(client)
    _publish_all(messages, url, collected)
    try:
        started = time.perf_counter()
        client = sub.connect(clean=False)
        try:
            if not sub.done.wait(_drain_timeout(total)):
                raise BenchError(f"paho drain: {sub.received} of {total} messages arrived in time")
        finally:
            sub.close(client)
    finally:
        cleaner = _PahoSubscriber(url, client_id, v5=v5)
        cleaner.close(cleaner.connect(clean=True))
    return Drain(total, sub.ended - started)


# -- 3. raw COPY ---------------------------------------------------------------------------------------
def copy_records(messages: Sequence[SimMessage]) -> list[tuple[object, ...]]:
    """The daemon's own COPY tuples for the backlog (decoded by its engine)."""
    now_ms = int(time.time() * 1000)
    engine = Engine(EngineConfig(BASE_WARD), load_pipelines())
    out = engine.handle((RawMessage(m.topic, m.payload, now_ms) for m in messages), now_ms)
    if out.rejections or out.duplicates:
        reasons = sorted({r.reason for r in out.rejections})
        raise BenchError(f"the backlog is not all valid: {len(out.rejections)} rejected {reasons}, "
                         f"{out.duplicates} duplicates")
    return [reading_record(BASE_WARD, r) for r in out.readings]


_COPY_TABLE_SQL: Final = """
CREATE TABLE bench_copy (
    ward text NOT NULL, patient_id text NOT NULL, vital text NOT NULL, ts timestamptz NOT NULL,
    dedup text NOT NULL DEFAULT '', num double precision, doc jsonb, wave bytea, device text,
    seq bigint, received_at timestamptz NOT NULL
)
"""


async def copy_rate(dsn: str, records: Sequence[tuple[object, ...]]) -> Drain:
    """``copy_records_to_table`` in batches of 10,000 into a plain, unindexed table."""
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)  # timestamptz as epoch ms, exactly as the daemon sends them
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.execute(_COPY_TABLE_SQL)
        started = time.perf_counter()
        for i in range(0, len(records), COPY_BATCH):
            await conn.copy_records_to_table("bench_copy", records=records[i:i + COPY_BATCH],
                                             columns=READING_COLUMNS)
        seconds = time.perf_counter() - started
        stored = int(await conn.fetchval("SELECT count(*) FROM bench_copy"))
        await conn.execute("DROP TABLE bench_copy")
    finally:
        await conn.close()
    if stored != len(records):
        raise BenchError(f"COPY stored {stored} of {len(records)} rows")
    return Drain(len(records), seconds)


# -- 4. MonitorMe end to end -------------------------------------------------------------------------
class _Daemon:
    """``python -m monitorme run --insecure-no-auth`` as a child process, its JSON log parsed."""

    def __init__(self, env: dict[str, str], http_port: int) -> None:
        self.http_port = http_port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitorme", "run", "--insecure-no-auth"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.events: queue.Queue[tuple[dict[str, Any], float]] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=40)
        self.warnings: list[str] = []
        self._reader = threading.Thread(target=self._read, name="bench.daemon_log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stdout
        if stream is None:
            return
        with stream:  # closed when the daemon's output ends, not left to the garbage collector
            self._read_lines(stream)

    def _read_lines(self, stream: Any) -> None:
        for line in stream:
            seen = time.time()
            self.tail.append(line.rstrip())
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            if doc.get("level") in ("warning", "error", "critical"):
                self.warnings.append(f"{doc.get('level')}: {doc.get('event')}")
            self.events.put((doc, seen))

    def log_tail(self) -> str:
        return "\n".join(self.tail)

    def wait_event(self, name: str, timeout_s: float) -> tuple[dict[str, Any], float]:
        """The first log record with ``"event": name`` and when the bench read it (epoch s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if _STOP.is_set():
                raise BenchError(f"interrupted while waiting for the daemon's {name}")
            if remaining <= 0 or (self.proc.poll() is not None and self.events.empty()):
                raise BenchError(f"daemon logged no {name} (exit code {self.proc.poll()}); log tail:\n"
                                 + self.log_tail())
            try:
                doc, seen = self.events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if doc.get("event") == name:
                return doc, seen

    def metrics(self) -> dict[str, float]:
        """Sum of each series in ``GET /metrics`` by metric name."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode("utf-8")
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            name = series.split("{", 1)[0]
            with contextlib.suppress(ValueError):
                totals[name] = totals.get(name, 0.0) + float(value)
        return totals

    def peak_rss(self) -> int:
        """VmHWM (peak resident set size over the process's life), bytes; 0 where unknown."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout_s``); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def _cpu_s(ps: psutil.Process) -> float:
    times = ps.cpu_times()
    return float(times.user + times.system)


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _watch_drain(daemon: _Daemon, dsn: str, expected: int) -> tuple[Drain, float, float, int]:
    """From ``mqtt_connected`` until the readings table holds ``expected`` rows.

    Returns:
        The drain, CPU seconds over it, how late the log line was read, and the peak RSS sampled.
    """
    conn = await asyncpg.connect(dsn)
    try:
        doc, seen = await asyncio.to_thread(daemon.wait_event, "mqtt_connected", 60.0)
        cpu_at_connect = _cpu_s(daemon.ps)
        connected_at = datetime.fromisoformat(str(doc["ts"])).timestamp()
        deadline = time.monotonic() + _drain_timeout(expected)
        sampled_rss = 0
        while True:
            count = int(await conn.fetchval("SELECT count(*) FROM readings"))
            now = time.time()
            if count >= expected:
                break
            if daemon.proc.poll() is not None:
                raise BenchError(f"daemon exited ({daemon.proc.returncode}) at {count} of {expected} rows; "
                                 f"log tail:\n{daemon.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"MonitorMe stored {count} of {expected} readings in time")
            sampled_rss = max(sampled_rss, daemon.ps.memory_info().rss)
            await asyncio.sleep(POLL_S)
        cpu = _cpu_s(daemon.ps) - cpu_at_connect
        if count != expected:
            raise BenchError(f"MonitorMe stored {count} readings, {count - expected} more than published")
    finally:
        await conn.close()
    return Drain(expected, now - connected_at), cpu, seen - connected_at, sampled_rss


def monitorme_drain(url: str, dsn: str, ward: str, messages: Sequence[SimMessage],
                    collected: Collected, extra_env: dict[str, str] | None = None) -> DaemonDrain:
    """Start the daemon once (session), stop it, publish the backlog, start it and time the drain."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
    env.update(extra_env or {})
    env.update({
        "MONITORME_MQTT_URL": url,
        "MONITORME_DATABASE_URL": dsn,
        "MONITORME_WARD": ward,
        "MONITORME_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    })

    def start() -> _Daemon:
        port = free_port()
        return _Daemon({**env, "MONITORME_HTTP": f"127.0.0.1:{port}"}, port)

    first = start()
    try:
        first.wait_event("mqtt_connected", 60.0)
    finally:
        code = first.stop()
    if code != 0:
        raise BenchError(f"daemon (session run) exited with {code}; log tail:\n{first.log_tail()}")
    # count(*) must see this run's readings only.
    uvloop.run(_execute(dsn, "TRUNCATE readings, dead_letters"))
    _publish_all(messages, url, collected)

    daemon = start()
    try:
        drain, cpu, seen_after, sampled_rss = uvloop.run(_watch_drain(daemon, dsn, len(messages)))
        metrics = daemon.metrics()
        peak = daemon.peak_rss() or sampled_rss
    finally:
        code = daemon.stop()
    if daemon.warnings:
        collected.problems.append(f"daemon logged {len(daemon.warnings)} warnings/errors: {daemon.warnings[:5]}")
    if code != 0:
        collected.problems.append(f"daemon exited with {code} after SIGTERM; log tail:\n{daemon.log_tail()}")
    return DaemonDrain(drain, cpu, peak, code, metrics, seen_after)


# -- orchestration -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _admin_dsn() -> Iterator[str]:
    """The local server on 5432, else an embedded pgserver for the duration."""
    if port_open("127.0.0.1", 5432):
        yield SYSTEM_PG_DSN
        return
    with EmbeddedPostgres() as pg:
        yield pg.dsn


async def _server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def _mosquitto_version() -> str:
    exe = MosquittoBroker.executable()
    if exe is None:
        return "?"
    out = subprocess.run([exe, "-h"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].removeprefix("mosquitto version ").strip() if out else "?"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "?"


def _source_tree() -> dict[str, object]:
    """The commit measured and whether the working tree differed from it (read-only git calls)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True,
                                  text=True, check=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "modified_files": None if status is None else len(status.splitlines())}


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("aiomqtt", "paho-mqtt", "asyncpg", "uvloop", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


def run_all(patients: int, seconds: float, runs: int, with_paho: bool, *,
            shared: tuple[MosquittoBroker, str] | None = None) -> dict[str, Any]:
    """Run every measurement ``runs`` times; the report as a JSON-ready dict.

    ``shared``: a running broker and an admin DSN to use instead of starting a private pair
    (bench.suite measures everything on one broker and one database server).
    """
    start_ms = int(time.time() * 1000) - int(seconds * 1000) - 60_000
    _say(f"generating the backlog: {patients} patients x {seconds:g} s ...")
    base = list(generate_ward(BASE_WARD, patients, start_ms, seconds))
    records = copy_records(base)
    total = len(base)
    _say(f"backlog: {total:,} messages ({sum(m.vital == 'ecg' for m in base):,} ECG chunks)")
    collected = Collected()
    with contextlib.ExitStack() as stack:
        if shared is None:
            broker = stack.enter_context(MosquittoBroker())
            admin = stack.enter_context(_admin_dsn())
        else:
            broker, admin = shared
        db = f"monitorme_bench_{secrets.token_hex(4)}"
        uvloop.run(_execute(admin, f'CREATE DATABASE "{db}"'))
        stack.callback(lambda: uvloop.run(_execute(admin, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')))
        dsn = with_database(admin, db)
        pg_version = uvloop.run(_server_version(admin))
        _say(f"broker {broker.url}, database {db} on {'5432' if admin == SYSTEM_PG_DSN else 'embedded pgserver'}")
        for run in range(1, runs + 1):
            tag = f"{run}{secrets.token_hex(2)}"
            steps: list[tuple[str, Callable[[], Drain]]] = [
                ("aiomqtt_v311", lambda w=f"a3-{tag}": uvloop.run(
                    aiomqtt_drain(broker.url, w, _for_ward(base, w), v5=False, collected=collected))),
                ("aiomqtt_v5", lambda w=f"a5-{tag}": uvloop.run(
                    aiomqtt_drain(broker.url, w, _for_ward(base, w), v5=True, collected=collected))),
            ]
            steps.append(("wire_v5", lambda w=f"w5-{tag}": uvloop.run(
                wire_drain(broker.url, w, _for_ward(base, w), collected=collected))))
            if with_paho:
                steps += [
                    ("paho_v311", lambda w=f"p3-{tag}": paho_drain(
                        broker.url, w, _for_ward(base, w), v5=False, collected=collected)),
                    ("paho_v5", lambda w=f"p5-{tag}": paho_drain(
                        broker.url, w, _for_ward(base, w), v5=True, collected=collected)),
                ]
            steps.append(("copy", lambda: uvloop.run(copy_rate(dsn, records))))
            for name, step in steps:
                drain = step()
                collected.add(name, drain)
                _say(f"run {run}: {name:<13} {drain.rate:>10,.0f}/s  ({drain.count:,} in {drain.seconds:.2f} s)")
            ward = f"m-{tag}"
            result = monitorme_drain(broker.url, dsn, ward, _for_ward(base, ward), collected)
            collected.add("monitorme", result.drain)
            collected.daemon.append(result)
            _say(f"run {run}: {'monitorme':<13} {result.drain.rate:>10,.0f}/s  ({result.drain.count:,} in "
                 f"{result.drain.seconds:.2f} s), {1000 * result.cpu_s / result.drain.count:.3f} CPU-s/1k, "
                 f"peak RSS {result.peak_rss_bytes / 2**20:.0f} MiB, exit {result.exit_code}")
    return _report(patients, seconds, runs, total, collected, pg_version)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _report(patients: int, seconds: float, runs: int, total: int, c: Collected, pg_version: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, _label, unit, _perf in MEASUREMENTS:
        if name not in c.rates:
            continue
        results[name] = {
            "unit": unit,
            "median": round(_median(c.rates[name]), 1),
            "rates": [round(r, 1) for r in c.rates[name]],
            "seconds": [round(s, 3) for s in c.seconds[name]],
        }
    if c.daemon:
        cpu_per_k = [1000 * d.cpu_s / d.drain.count for d in c.daemon]
        batches = [d.metrics.get("monitorme_store_batches_total", 0.0) for d in c.daemon]
        results["monitorme"].update({
            "cpu_s_per_1000": [round(x, 4) for x in cpu_per_k],
            "cpu_s_per_1000_median": round(_median(cpu_per_k), 4),
            "cpu_s": [round(d.cpu_s, 3) for d in c.daemon],
            "peak_rss_mb": [round(d.peak_rss_bytes / 2**20, 1) for d in c.daemon],
            "exit_codes": [d.exit_code for d in c.daemon],
            "stored_total": [d.metrics.get("monitorme_stored_total", 0.0) for d in c.daemon],
            "duplicates": [d.metrics.get("monitorme_duplicates_total", 0.0) for d in c.daemon],
            "store_batches": batches,
            "rows_per_batch": [round(d.drain.count / b, 1) if b else None for d, b in zip(c.daemon, batches,
                                                                                             strict=True)],
            "connect_line_read_after_s": [round(d.connect_seen_after_s, 3) for d in c.daemon],
        })
    mm = results.get("monitorme", {}).get("median", 0.0)

    def ratio(den: float) -> float | None:
        return round(mm / den, 3) if mm and den else None

    ratios: dict[str, float | None] = {}
    for name in ("aiomqtt_v311", "aiomqtt_v5", "wire_v5", "paho_v311", "paho_v5", "copy"):
        if name in results:
            ratios[f"monitorme_vs_{name}"] = ratio(results[name]["median"])
    for key in ("bare_aiomqtt_qos1", "bare_paho_qos1", "nodered_batched_backlog_drain"):
        ratios[f"monitorme_vs_perf_{key}"] = ratio(PERF_REFERENCE[key])
    return {
        "schema": SCHEMA,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "mosquitto": _mosquitto_version(),
            "postgresql": pg_version,
            "libraries": _versions(),
        },
        "source": _source_tree(),
        "patients": patients,
        "simulated_seconds": seconds,
        "messages": total,
        "runs": runs,
        "publish": {"unit": "msg/s", "median": round(_median(c.publish_rates), 1),
                    "rates": [round(r, 1) for r in c.publish_rates]},
        "results": results,
        "ratios": ratios,
        "reference": {"source": "/work/shared/PERF.md", "unit": "msg/s or rows/s", **PERF_REFERENCE},
        "problems": c.problems,
    }


def _k(value: float) -> str:
    return f"{value / 1000:.1f}k" if value < 100_000 else f"{value / 1000:.0f}k"


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of a report."""
    results = report["results"]
    mm = results.get("monitorme", {}).get("median", 0.0)
    machine = report["machine"]
    lines = [
        f"QoS 1 backlog drain: {report['patients']} patients x {report['simulated_seconds']:g} s = "
        f"{report['messages']:,} messages; {report['runs']} run(s), medians; {machine['nproc']} cores, "
        f"Python {machine['python']}, Mosquitto {machine['mosquitto']}, PostgreSQL {machine['postgresql']}",
        "",
        f"{'measurement':<40} {'rate':>15}  {'MonitorMe ÷ this':>16}  PERF.md beside it",
        "-" * 110,
    ]
    for name, label, unit, perf in MEASUREMENTS:
        if name not in results:
            continue
        rate = results[name]["median"]
        ratio = "" if name == "monitorme" or not rate else f"{mm / rate:.2f}"
        lines.append(f"{label:<40} {rate:>8,.0f} {unit:<6}  {ratio:>16}  {perf}")
    if "monitorme" in results:
        m = results["monitorme"]
        lines += [
            "-" * 110,
            f"MonitorMe ÷ PERF.md bare aiomqtt QoS 1 (7.3k):         "
            f"{mm / PERF_REFERENCE['bare_aiomqtt_qos1']:.2f}",
            f"MonitorMe ÷ PERF.md Node-RED batched drain (13.1k):    "
            f"{mm / PERF_REFERENCE['nodered_batched_backlog_drain']:.2f}",
            f"MonitorMe daemon: {m['cpu_s_per_1000_median']:.3f} CPU-s per 1,000 readings "
            f"({_k(1000 / m['cpu_s_per_1000_median']) if m['cpu_s_per_1000_median'] else '?'} readings per "
            f"CPU-second), peak RSS {max(m['peak_rss_mb']):.0f} MiB, "
            f"{_median([b for b in m['rows_per_batch'] if b]):,.0f} rows per batch, exit codes {m['exit_codes']}",
        ]
    lines.append(f"publisher (paho, QoS 1, informational): {report['publish']['median']:,.0f} msg/s")
    for problem in report["problems"]:
        lines.append(f"PROBLEM: {problem}")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=500, help="simulated patients (default 500)")
    parser.add_argument("--seconds", type=float, default=30.0, help="simulated seconds of backlog (default 30)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole sequence; medians are reported")
    parser.add_argument("--json", default="bench/results/ingest.json",
                        help="write the report here ('' to skip; default bench/results/ingest.json)")
    parser.add_argument("--no-paho", action="store_true", help="skip the bare paho drains")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.seconds <= 0 or args.runs < 1:
        parser.error("--patients, --seconds and --runs must be positive")
    return args


def _interrupt() -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        # Treat SIGTERM as Ctrl-C, so the finally blocks stop the daemon, drop the database and
        # stop the broker. Inside uvloop.run an exception raised here can be lost in the loop's
        # signal plumbing: there it is raised from a callback, which ends the loop instead.
        _STOP.set()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise KeyboardInterrupt from None
        loop.call_soon_threadsafe(_interrupt)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        report = run_all(args.patients, args.seconds, args.runs, not args.no_paho)
    except BenchError as exc:
        _say(f"bench.ingest: {exc}")
        return 130 if _STOP.is_set() else 1
    except KeyboardInterrupt:
        _say("bench.ingest: interrupted; everything it started is stopped and its database dropped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {path}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

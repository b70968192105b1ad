"""Batched, de-duplicating writes of readings, dead letters and admissions to PostgreSQL.

Rows are COPYed into a per-connection staging table and moved into the partitioned
``readings`` with ``ON CONFLICT DO NOTHING``, so a redelivered reading is stored once
even across restarts. Only after the transaction commits are the batch's MQTT
messages acknowledged (``on_durable``): a crash before that makes the broker resend.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np
import orjson

from monitorme.adapters import partitions
from monitorme.adapters.pg_codecs import init_connection
from monitorme.adapters.spool import Spool, SpooledBatch, decode, encode
from monitorme.core.alerts import Alert
from monitorme.core.model import AuditEntry, Outputs, Reading, Rejection, Waveform
from monitorme.metrics import Metrics

log = logging.getLogger(__name__)

READING_COLUMNS = (
    "ward", "patient_id", "vital", "ts", "dedup", "num", "doc", "wave", "device", "seq", "received_at",
)
DEAD_LETTER_COLUMNS = ("ward", "received_at", "topic", "reason", "detail", "payload", "payload_size")
# fine steps below 100 ms, where the latency goals are, then coarse up to a replayed day
LAG_BUCKETS_S = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1,
                 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)
_TRANSIENT = (OSError, ConnectionError, TimeoutError, asyncpg.InterfaceError,
              asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
              asyncpg.AdminShutdownError, asyncpg.TooManyConnectionsError,
              # seen when the server went away mid-COPY: the connection object is left mid-operation
              asyncpg.InternalClientError)


def _link_failure(exc: BaseException) -> bool:
    """Whether a write failed because of the link (retry, spool) rather than because of the data.

    Anything that is not PostgreSQL refusing a statement counts as the link: the writer must never
    die of an exception type nobody foresaw, since that would stop the ward's alerts too.
    """
    return isinstance(exc, _TRANSIENT) or not isinstance(exc, asyncpg.PostgresError)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """How the writer batches and retries."""

    ward: str
    dsn: str
    batch_rows: int = 10_000  # flush at this many rows ...
    flush_ms: int = 10  # ... or when the oldest pending row is this old (<= 100 ms); while a write is
    # in flight rows gather anyway, so a short linger costs little at high load and keeps latency low
    max_pending_rows: int = 200_000  # producers wait beyond this: backpressure, never shedding
    retry_max_s: float = 10.0
    connect_timeout_s: float = 10.0
    spool_dir: Path | None = None  # where batches wait while the database is away (None: no spool)
    spool_max_bytes: int = 1 << 30


@dataclass(slots=True)
class _Pending:
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    acks: list[object] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0


def _describe(r: Reading) -> bytes:
    """The reading as JSON, for a dead letter of a row the database refused."""
    value = {"hz": r.value.hz, "samples": r.value.count} if isinstance(r.value, Waveform) else r.value
    return orjson.dumps({"ts": r.ts_ms, "value": value, "device": r.device, "seq": r.seq})[:4096]


def reading_record(ward: str, r: Reading) -> tuple[object, ...]:
    """The COPY tuple of one reading (timestamps as epoch ms, see ``pg_codecs``)."""
    value = r.value
    num: float | None = None
    doc: str | None = None
    wave: bytes | None = None
    if isinstance(value, float):
        num = value
    elif isinstance(value, Waveform):
        doc = f'{{"hz": {orjson.dumps(value.hz).decode()}}}'
        wave = value.samples
    else:
        doc = orjson.dumps(value).decode()
    return (ward, r.patient, r.vital, r.ts_ms, r.dedup_key, num, doc, wave, r.device, r.seq, r.received_ms)


class PgWriter:
    """Accepts engine outputs, writes them in batches, then reports them durable.

    Args:
        config: batching and connection settings.
        metrics: counters to update.
        on_durable: called with the ack tokens of each committed batch, in order.
    """

    def __init__(
        self,
        config: WriterConfig,
        metrics: Metrics,
        on_durable: Callable[[list[object]], None] = lambda _acks: None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.on_durable = on_durable
        self._pending = _Pending()
        self._has_rows = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._conn: asyncpg.Connection | None = None
        self._hours: set[int] = set()
        self._stopping = False
        self.connected = False
        self.failing = False  # the last write attempt failed and is being retried
        self.last_commit_ms = 0
        self.spool = Spool(config.spool_dir, config.spool_max_bytes) if config.spool_dir is not None else None
        self._replay_after = 0.0  # monotonic time of the next replay attempt
        self._replay_attempts = 0
        self._spool_full_logged = False
        if self.spool is not None:
            spool = self.spool
            metrics.gauge("monitorme_spool_bytes", lambda: spool.bytes)
            metrics.gauge("monitorme_spool_batches", lambda: spool.batches)
            metrics.describe("monitorme_spooled_batches_total", "counter",
                             "Batches written to the local spool while the database was away.")
            metrics.describe("monitorme_spool_full_total", "counter",
                             "Batches held in memory (not spooled, not acknowledged) because the spool was full.")
        metrics.describe("monitorme_stored_total", "counter", "Readings committed to PostgreSQL.")
        metrics.describe("monitorme_duplicates_total", "counter", "Readings already stored, by where they were caught.")
        metrics.gauge("monitorme_writer_pending_rows", lambda: self._pending.rows)
        metrics.describe("monitorme_store_lag_seconds", "histogram",
                         "Reading timestamp (device clock) to commit: publish -> stored when clocks agree.")
        metrics.describe("monitorme_store_delay_seconds", "histogram",
                         "Receipt by the daemon to commit in PostgreSQL (this process's clock only).")
        self._lag = metrics.histogram("monitorme_store_lag_seconds", LAG_BUCKETS_S)
        self._delay = metrics.histogram("monitorme_store_delay_seconds", LAG_BUCKETS_S)

    # -- producer side -------------------------------------------------------------
    def submit(self, outputs: Outputs, acks: Sequence[object]) -> None:
        """Queue one engine output and the acks of the messages that produced it."""
        p = self._pending
        n = (len(outputs.readings) + len(outputs.rejections) + len(outputs.admitted) + len(outputs.alerts)
             + len(outputs.audit))
        if p.rows == 0 and not p.acks:
            p.since = time.monotonic()
        p.readings.extend(outputs.readings)
        p.rejections.extend(outputs.rejections)
        p.admitted.extend(outputs.admitted)
        p.alerts.extend(outputs.alerts)
        p.audit.extend(outputs.audit)
        p.acks.extend(acks)
        p.rows += n
        if n or acks:
            self._has_rows.set()
        if p.rows >= self.config.batch_rows:
            self._full.set()
        if p.rows >= self.config.max_pending_rows:
            self._room.clear()

    async def wait_for_room(self) -> None:
        """Wait while the writer holds more than ``max_pending_rows`` (database slow or down)."""
        await self._room.wait()

    @property
    def pending_rows(self) -> int:
        return self._pending.rows

    # -- the loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Flush until ``stop`` is set and everything pending is written."""
        while True:
            if not self._has_rows.is_set():
                if stop.is_set():
                    return
                waiter = asyncio.ensure_future(self._has_rows.wait())
                stopper = asyncio.ensure_future(stop.wait())
                idle = 1.0 if self.spool is not None and self.spool.batches else None
                try:
                    await asyncio.wait({waiter, stopper}, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
                if not self._has_rows.is_set() and not stop.is_set():
                    await self._replay()  # the database may be back: drain the spool while idle
                continue
            if not stop.is_set():
                age = time.monotonic() - self._pending.since
                remaining = self.config.flush_ms / 1000 - age
                if remaining > 0:
                    try:
                        async with asyncio.timeout(remaining):
                            await self._full.wait()
                    except TimeoutError:
                        pass
            batch, self._pending = self._pending, _Pending()
            self._has_rows.clear()
            self._full.clear()
            await self._write_with_retry(batch, stop)
            if self._pending.rows < self.config.max_pending_rows:
                self._room.set()

    async def _write_with_retry(self, batch: _Pending, stop: asyncio.Event) -> None:
        # What waits in the spool is older than this batch and goes first.
        if self.spool is not None and self.spool.batches and not await self._replay() \
                and await self._to_spool(batch):
            return
        attempt = 0
        while True:
            try:
                await self._write(batch)
                self.failing = False
                break
            except Exception as exc:  # sorted below: the link (retry, spool) or the data (isolate)
                failure = exc
            attempt += 1
            if _link_failure(failure):
                self.failing = True
                self._drop_connection()
                if await self._to_spool(batch):  # durable on disk: acknowledged, written later
                    self._replay_after = time.monotonic() + 1.0
                    return
                delay = random.uniform(0, min(self.config.retry_max_s, 0.1 * 2**attempt))
                log.warning("store_retry", extra={"attempt": attempt, "error": repr(failure)[:300],
                                                  "delay_s": round(delay, 2)})
                self.metrics.inc("monitorme_store_retries_total")
                await asyncio.sleep(delay)
                continue
            # Not the link: the database refuses something in this batch. Find the rows it
            # refuses so that one bad reading cannot stall the whole ward; keep them as
            # dead letters and store the rest.
            log.error("store_batch_refused", extra={"rows": len(batch.readings), "error": repr(failure)[:500]})
            self.metrics.inc("monitorme_store_refused_batches_total")
            refused = await self._refused_readings(batch)
            if not refused:  # nothing row-specific: back off as for an outage, then retry
                await asyncio.sleep(random.uniform(0, min(self.config.retry_max_s, 0.1 * 2**attempt)))
                continue
            keep = [r for i, r in enumerate(batch.readings) if i not in refused]
            batch.rejections.extend(
                Rejection(
                    topic=f"monitorme/{self.config.ward}/{r.patient}/{r.vital}", reason="store_refused",
                    detail=refused[i], payload=_describe(r), payload_size=0, received_ms=r.received_ms,
                )
                for i, r in enumerate(batch.readings) if i in refused
            )
            batch.readings = keep
        self.last_commit_ms = committed = int(time.time() * 1000)
        if batch.readings:
            n = len(batch.readings)
            ts = np.fromiter((r.ts_ms for r in batch.readings), dtype=np.int64, count=n)
            received = np.fromiter((r.received_ms for r in batch.readings), dtype=np.int64, count=n)
            self._lag.observe_many((committed - ts) / 1000.0)
            self._delay.observe_many((committed - received) / 1000.0)
        if batch.acks:
            self.on_durable(batch.acks)

    async def _to_spool(self, batch: _Pending) -> bool:
        """Spool ``batch`` durably and acknowledge it; False when there is no spool or no room."""
        spool = self.spool
        if spool is None:
            return False
        data = await asyncio.to_thread(encode, SpooledBatch(batch.readings, batch.rejections, batch.admitted,
                                                            batch.alerts, batch.audit))
        if not spool.has_room(len(data)):
            # Policy when full: hold the batch in memory and keep retrying the database; the
            # processor stops taking messages at max_pending_rows, so the broker keeps the rest
            # in our persistent session. Nothing is dropped; intake (and analysis) pauses.
            self.metrics.inc("monitorme_spool_full_total")
            if not self._spool_full_logged:
                self._spool_full_logged = True
                log.error("spool_full", extra={"spool_bytes": spool.bytes, "max_bytes": spool.max_bytes,
                                               "policy": "hold in memory, pause intake at max_pending_rows"})
            return False
        self._spool_full_logged = False
        await asyncio.to_thread(spool.append, data)
        self.metrics.inc("monitorme_spooled_batches_total")
        self.metrics.inc("monitorme_spooled_readings_total", len(batch.readings))
        if spool.batches == 1:
            log.warning("spooling", extra={"spool_dir": str(spool.directory)})
        if batch.acks:
            self.on_durable(batch.acks)
        return True

    async def replay_spool(self, budget_s: float | None = None) -> bool:
        """Write what the spool holds now, without waiting for a backoff; True once it is empty.

        With ``budget_s`` it stops after the batch that overruns it; the rest waits for ``run``.
        """
        self._replay_after = 0.0
        return await self._replay(None if budget_s is None else time.monotonic() + budget_s)

    async def _replay(self, until: float | None = None) -> bool:
        """Write spooled batches oldest first; True once the spool is empty."""
        spool = self.spool
        if spool is None or not spool.batches:
            return True
        if time.monotonic() < self._replay_after:
            return False
        for path, data in await asyncio.to_thread(lambda: list(spool.oldest())):
            if until is not None and time.monotonic() > until:
                return False
            spooled = await asyncio.to_thread(decode, data)
            batch = _Pending(spooled.readings, spooled.rejections, spooled.admitted, spooled.alerts, spooled.audit)
            try:
                await self._write(batch)
            except Exception as exc:
                if not _link_failure(exc):
                    kept = await asyncio.to_thread(spool.quarantine, path, len(data))
                    log.error("spool_batch_quarantined", extra={"error": repr(exc)[:500], "path": str(kept)})
                    self.metrics.inc("monitorme_spool_quarantined_total")
                    continue
                self.failing = True
                self._drop_connection()
                self._replay_attempts += 1
                delay = random.uniform(0.5, min(self.config.retry_max_s, 0.5 * 2**self._replay_attempts))
                self._replay_after = time.monotonic() + delay
                log.info("spool_replay_waiting", extra={"error": repr(exc), "batches": spool.batches,
                                                        "delay_s": round(delay, 2)})
                return False
            await asyncio.to_thread(spool.remove, path, len(data))
            self.failing = False
            self.last_commit_ms = int(time.time() * 1000)
            self.metrics.inc("monitorme_spool_replayed_batches_total")
        self._replay_attempts = 0
        log.info("spool_drained")
        return True

    async def _refused_readings(self, batch: _Pending) -> dict[int, str]:
        """Try each reading alone in a savepoint, all rolled back; return index -> error of those refused."""
        conn = await self._connection()
        refused: dict[int, str] = {}
        insert = (
            f"INSERT INTO readings ({', '.join(READING_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9,"
            " $10, $11) ON CONFLICT DO NOTHING"
        )
        tx = conn.transaction()
        await tx.start()
        try:
            for i, reading in enumerate(batch.readings):
                try:
                    async with conn.transaction():
                        await conn.execute(insert, *reading_record(self.config.ward, reading))
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, _TRANSIENT):
                        raise
                    refused[i] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            await tx.rollback()
        return refused

    def _drop_connection(self) -> None:
        self.connected = False
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(self.config.dsn, timeout=self.config.connect_timeout_s)
            await init_connection(conn)
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS readings_stage (LIKE readings) ON COMMIT DELETE ROWS"
            )
            self._hours = await partitions.existing_hours(conn)
            self._conn = conn
            self.connected = True
        return self._conn

    async def _write(self, batch: _Pending) -> None:
        conn = await self._connection()
        ward = self.config.ward
        records = [reading_record(ward, r) for r in batch.readings]
        hours = {r.ts_ms // partitions.HOUR_MS for r in batch.readings} - self._hours
        if hours:
            await partitions.ensure_partitions(conn, hours)
            self._hours |= hours
        started = time.perf_counter()
        async with conn.transaction():
            stored = 0
            if records:
                await conn.copy_records_to_table("readings_stage", records=records, columns=READING_COLUMNS)
                status = await conn.execute(
                    "INSERT INTO readings SELECT * FROM readings_stage ON CONFLICT DO NOTHING"
                )
                stored = int(status.rsplit(" ", 1)[-1])
            if batch.rejections:
                await conn.copy_records_to_table(
                    "dead_letters",
                    records=[
                        (ward, j.received_ms, j.topic, j.reason, j.detail, j.payload, j.payload_size)
                        for j in batch.rejections
                    ],
                    columns=DEAD_LETTER_COLUMNS,
                )
            if batch.admitted:
                await conn.execute(
                    "INSERT INTO patients (ward, patient_id) SELECT $1, unnest($2::text[])"
                    " ON CONFLICT (ward, patient_id) DO UPDATE SET discharged_at = NULL, admitted_at = now(),"
                    " station = NULL WHERE patients.discharged_at IS NOT NULL",
                    ward, batch.admitted,
                )
            if batch.alerts:
                await self._write_alerts(conn, batch.alerts)
            if batch.audit:
                await conn.copy_records_to_table(
                    "audit",
                    records=[(e.at_ms, ward, e.actor, e.role, e.action, e.patient, e.alert_id, e.detail)
                             for e in batch.audit],
                    columns=("at", "ward", "actor", "role", "action", "patient_id", "alert_id", "detail"),
                )
        m = self.metrics
        m.inc("monitorme_stored_total", stored)
        m.inc("monitorme_duplicates_total", len(records) - stored, caught="database")
        m.inc("monitorme_dead_letters_stored_total", len(batch.rejections))
        m.inc("monitorme_store_batches_total")
        m.inc("monitorme_store_batch_rows_sum", len(records))
        m.inc("monitorme_store_seconds_sum", time.perf_counter() - started)

    @staticmethod
    async def _write_alerts(conn: asyncpg.Connection, alerts: list[Alert]) -> None:
        """Upsert each alert's current state (last change wins) and append every change."""
        docs = [orjson.dumps(a.as_json()).decode() for a in alerts]
        latest = {a.id: (a, d) for a, d in zip(alerts, docs, strict=True)}
        await conn.executemany(
            "INSERT INTO alerts (id, ward, patient_id, station, rule, vital, kind, priority, state, raised_ts, ts, doc)"
            " VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET station = EXCLUDED.station, priority = EXCLUDED.priority,"
            " state = EXCLUDED.state, ts = EXCLUDED.ts, doc = EXCLUDED.doc, updated_at = now()",
            [(a.id, a.ward, a.patient, a.station, a.rule, a.vital, a.kind.value, a.priority.value, a.state.value,
              a.raised_ts, a.ts, d) for a, d in latest.values()],
        )
        await conn.copy_records_to_table(
            "alert_events",
            records=[(a.id, a.ward, a.patient, a.state.value, a.priority.value, a.ts, d)
                     for a, d in zip(alerts, docs, strict=True)],
            columns=("alert_id", "ward", "patient_id", "state", "priority", "ts", "doc"),
        )

    async def aclose(self) -> None:
        if self.spool is not None:
            self.spool.close()
        if self._conn is not None:
            try:
                async with asyncio.timeout(5):
                    await self._conn.close()
            except (TimeoutError, *_TRANSIENT):
                self._conn.terminate()
            self._conn = None

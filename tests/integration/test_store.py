"""PostgreSQL side for real: migrations, partitions, de-duplicating batched writes, acks after commit."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import numpy as np
import orjson
import pytest

from monitorme.adapters import partitions
from monitorme.adapters.migrations import apply_migrations, migrations_dir
from monitorme.adapters.pg_codecs import init_connection
from monitorme.adapters.pg_writer import PgWriter, WriterConfig
from monitorme.adapters.spool import SpooledBatch, encode
from monitorme.config import load_pipelines
from monitorme.core.engine import Engine, EngineConfig
from monitorme.core.model import RawMessage
from monitorme.demo.services import free_port
from monitorme.metrics import Metrics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
HOUR = partitions.HOUR_MS
REG = load_pipelines()


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


async def test_migrations_apply_once_even_when_two_daemons_race(pg_dsn: str) -> None:
    # pg_dsn is already migrated from the template; two more concurrent runs must change nothing.
    first, second = await asyncio.gather(apply_migrations(pg_dsn), apply_migrations(pg_dsn))
    assert first == [] and second == []
    conn = await connect(pg_dsn)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert versions == [p.stem for p in sorted(migrations_dir().glob("*.sql"))]
    finally:
        await conn.close()


async def test_fresh_database_migrates_concurrently(pg_dsn: str) -> None:
    conn = await connect(pg_dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    results = await asyncio.gather(*(apply_migrations(pg_dsn) for _ in range(3)))
    assert sorted(map(len, results)) == [0, 0, len(list(migrations_dir().glob("*.sql")))]


async def test_partitions_are_made_ahead_and_dropped_whole(pg_dsn: str) -> None:
    conn = await connect(pg_dsn)
    try:
        now = now_ms()
        await partitions.upkeep(conn, now, retention_ms=24 * HOUR, ahead_hours=3)
        hours = await partitions.existing_hours(conn)
        assert {now // HOUR + 3, now // HOUR, (now - 24 * HOUR) // HOUR} <= hours
        # a row in the oldest partition, then time moves on two hours
        old_ts = (now - 24 * HOUR) // HOUR * HOUR
        await conn.execute(
            "INSERT INTO readings (ward, patient_id, vital, ts, num, received_at) VALUES ('w','p','spo2',$1,97,$1)",
            old_ts,
        )
        dropped = await partitions.drop_expired(conn, now + 2 * HOUR, retention_ms=24 * HOUR)
        assert partitions.partition_name(old_ts // HOUR) in dropped
        assert await conn.fetchval("SELECT count(*) FROM readings") == 0
        assert min(await partitions.existing_hours(conn)) > old_ts // HOUR
    finally:
        await conn.close()


async def test_old_dead_letters_of_the_ward_are_pruned_in_batches(pg_dsn: str) -> None:
    conn = await connect(pg_dsn)
    try:
        now = now_ms()
        ages_h = {"w1": [1, 100, 169, 170, 500], "w2": [500]}  # hours ago; keep 168 h
        for ward, ages in ages_h.items():
            for age in ages:
                await conn.execute(
                    "INSERT INTO dead_letters (ward, received_at, topic, reason, detail, payload, payload_size) "
                    "VALUES ($1, to_timestamp($2 / 1000.0), 't', 'not_json', '', '\\x00', 1)", ward, now - age * HOUR)
        pruned = await partitions.prune_dead_letters(conn, "w1", now, keep_ms=168 * HOUR, batch_rows=2)
        left = await conn.fetch("SELECT ward, round(extract(epoch FROM now() - received_at) / 3600) AS h "
                                "FROM dead_letters ORDER BY ward, h")
    finally:
        await conn.close()
    assert pruned == 3
    assert [(r["ward"], int(r["h"])) for r in left] == [("w1", 1), ("w1", 100), ("w2", 500)]  # other wards untouched


def raw(patient: str, vital: str, doc: dict[str, object]) -> RawMessage:
    return RawMessage(f"monitorme/w1/{patient}/{vital}", orjson.dumps(doc), now_ms(), ack=(patient, doc["ts"]))


async def write_all(dsn: str, batches: list[list[RawMessage]], metrics: Metrics | None = None) -> list[object]:
    """Run messages through a fresh engine and writer; return the acks in the order reported."""
    metrics = metrics or Metrics()
    acked: list[object] = []
    writer = PgWriter(WriterConfig("w1", dsn, flush_ms=20), metrics, on_durable=acked.extend)
    engine = Engine(EngineConfig("w1"), REG)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    for batch in batches:
        writer.submit(engine.handle(batch, now_ms()), [m.ack for m in batch])
        await asyncio.sleep(0.03)
    stop.set()
    await task
    await writer.aclose()
    return acked


async def test_writer_stores_every_vital_and_acks_only_after_commit(pg_dsn: str) -> None:
    t = now_ms() - 60_000
    samples = [round(0.01 * i, 2) for i in range(250)]
    batch = [
        raw("p1", "heart_rate", {"ts": t, "value": 71}),
        raw("p1", "blood_pressure", {"ts": t, "value": {"systolic": 121, "diastolic": 79}}),
        raw("p1", "ecg", {"ts": t, "value": {"hz": 250, "samples": samples}}),
        raw("p1", "sleep", {"ts": t, "value": "awake"}),
        raw("p2", "temperature", {"ts": t, "value": 99.5, "unit": "F"}),
        RawMessage("monitorme/w1/p2/spo2", b"{oops", now_ms(), ack=("bad", 0)),
    ]
    acked = await write_all(pg_dsn, [batch])
    assert acked == [m.ack for m in batch]  # all of them, in receipt order, rejected one included
    conn = await connect(pg_dsn)
    try:
        rows = {r["vital"]: r for r in await conn.fetch("SELECT * FROM readings")}
        assert rows["heart_rate"]["num"] == 71 and rows["heart_rate"]["ts"] == t
        assert orjson.loads(rows["blood_pressure"]["doc"]) == {"systolic": 121, "diastolic": 79}
        assert orjson.loads(rows["ecg"]["doc"]) == {"hz": 250.0}
        assert np.allclose(np.frombuffer(rows["ecg"]["wave"], "<f4"), samples, atol=1e-6)
        assert len(rows["ecg"]["wave"]) == 4 * 250  # one row, packed, per chunk
        assert rows["temperature"]["num"] == pytest.approx(37.5)
        letters = await conn.fetch("SELECT reason, payload, topic FROM dead_letters")
        assert [(r["reason"], r["payload"], r["topic"]) for r in letters] == [
            ("not_json", b"{oops", "monitorme/w1/p2/spo2")
        ]
        patients = {r["patient_id"] for r in await conn.fetch("SELECT patient_id FROM patients")}
        assert patients == {"p1", "p2"}
    finally:
        await conn.close()


async def test_redelivery_after_a_restart_is_stored_once(pg_dsn: str) -> None:
    t = now_ms() - 10_000
    batch = [raw("p1", "heart_rate", {"ts": t + i, "value": 70, "seq": i, "device": "d"}) for i in range(100)]
    batch += [raw("p1", "spo2", {"ts": t + i, "value": 97}) for i in range(50)]
    await write_all(pg_dsn, [batch])
    metrics = Metrics()
    # a new engine knows nothing: the database's unique index catches the redelivery
    await write_all(pg_dsn, [batch[:75], batch[75:]], metrics)
    conn = await connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 150
    finally:
        await conn.close()
    assert metrics.get("monitorme_duplicates_total", caught="database") == 150
    assert metrics.get("monitorme_stored_total") == 0


async def test_a_reading_for_an_hour_without_partition_gets_one(pg_dsn: str) -> None:
    conn = await connect(pg_dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS " + partitions.partition_name(now_ms() // HOUR - 5))
    finally:
        await conn.close()
    t = now_ms() - 5 * HOUR
    await write_all(pg_dsn, [[raw("p1", "heart_rate", {"ts": t, "value": 60})]])
    conn = await connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT num FROM readings WHERE ts = $1", t) == 60
    finally:
        await conn.close()


async def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_stored(pg_dsn: str) -> None:
    # A real refusal, no mock: a trigger that rejects one patient's rows.
    conn = await connect(pg_dsn)
    try:
        await conn.execute("""
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.patient_id = 'poison' THEN RAISE EXCEPTION 'refused by test trigger'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON readings FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """)
    finally:
        await conn.close()
    t = now_ms() - 1_000
    batch = [raw(p, "heart_rate", {"ts": t, "value": 70}) for p in ("p1", "poison", "p2")]
    metrics = Metrics()
    acked = await write_all(pg_dsn, [batch], metrics)
    assert acked == [m.ack for m in batch]
    conn = await connect(pg_dsn)
    try:
        assert sorted(r["patient_id"] for r in await conn.fetch("SELECT patient_id FROM readings")) == ["p1", "p2"]
        letter = await conn.fetchrow("SELECT reason, topic, detail, payload FROM dead_letters")
        assert letter["reason"] == "store_refused"
        assert letter["topic"] == "monitorme/w1/poison/heart_rate"
        assert "refused by test trigger" in letter["detail"]
        assert orjson.loads(letter["payload"])["value"] == 70
    finally:
        await conn.close()
    assert metrics.get("monitorme_store_refused_batches_total") == 1


class Forwarder:
    """A TCP port that reaches the test's PostgreSQL only while it is open: the database 'comes
    back' for a client configured with this port (connections before that are refused for real)."""

    def __init__(self, target_dsn: str) -> None:
        parts = urlsplit(target_dsn)
        socket_dir = parse_qs(parts.query).get("host", [None])[0]
        self.pg_port = parts.port or 5432
        self.pg_unix = f"{socket_dir}/.s.PGSQL.{self.pg_port}" if socket_dir else None
        self.pg_host = parts.hostname or "127.0.0.1"
        self.port = free_port()
        # the same database and user through 127.0.0.1:port
        self.dsn = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{self.port}", query=""))
        self.server: asyncio.Server | None = None

    async def open(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            if self.pg_unix:
                pg_r, pg_w = await asyncio.open_unix_connection(self.pg_unix)
            else:
                pg_r, pg_w = await asyncio.open_connection(self.pg_host, self.pg_port)
            await asyncio.gather(pipe(client_r, pg_w), pipe(pg_r, client_w))

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_full_spool_holds_batches_unacknowledged_then_stores_them_all_once(
        pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CONTRACT/README policy beyond ``spool.max_bytes``: batches are neither dropped nor
    acknowledged; they wait in memory (the broker keeps the rest), the condition is logged once and
    counted per attempt, and everything is stored exactly once when the database returns."""
    t = now_ms() - 60_000
    batches = [[raw("p1", "heart_rate", {"ts": t + 500 * (20 * b + i), "value": 60 + i}) for i in range(20)]
               for b in range(6)]
    engine = Engine(EngineConfig("w1"), REG)
    outputs = [engine.handle(batch, now_ms()) for batch in batches]
    one = len(encode(SpooledBatch(outputs[0].readings, outputs[0].rejections, outputs[0].admitted)))
    room = int(2.5 * one)  # two batches fit, the third does not
    database = Forwarder(pg_dsn)  # closed: the database is away
    metrics = Metrics()
    acked: list[object] = []
    writer = PgWriter(WriterConfig("w1", database.dsn, flush_ms=20, retry_max_s=0.2, connect_timeout_s=1,
                                   spool_dir=tmp_path / "spool", spool_max_bytes=room),
                      metrics, on_durable=acked.extend)
    acks = [[m.ack for m in batch] for batch in batches]
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        with caplog.at_level(logging.ERROR, logger="monitorme.adapters.pg_writer"):
            for out, batch_acks in zip(outputs, acks, strict=True):
                writer.submit(out, batch_acks)
                await asyncio.sleep(0.3)
            for _ in range(50):  # the held batch keeps retrying: the counter grows, the log does not
                if metrics.get("monitorme_spool_full_total") >= 3:
                    break
                await asyncio.sleep(0.1)
        assert writer.spool is not None
        spooled_batches, spooled_bytes = writer.spool.batches, writer.spool.bytes
        assert spooled_batches == 2 and spooled_bytes <= room
        assert acked == acks[0] + acks[1]  # spooled = durable = acknowledged; nothing else
        assert metrics.get("monitorme_spool_full_total") >= 3
        assert [r.getMessage() for r in caplog.records].count("spool_full") == 1
        assert writer.pending_rows == 60  # batches 4-6 wait in memory behind the held third

        await database.open()  # the database is back
        for _ in range(200):
            if len(acked) == 120 and writer.spool.batches == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
        await writer.aclose()
        await database.close()
    assert sorted(acked) == sorted(a for batch_acks in acks for a in batch_acks)
    assert len(acked) == len(set(acked)) == 120  # each acknowledged once
    assert writer.spool.batches == 0 and writer.spool.bytes == 0
    conn = await connect(pg_dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM readings")
        distinct = await conn.fetchval("SELECT count(DISTINCT ts) FROM readings")
    finally:
        await conn.close()
    assert total == distinct == 120

"""Retention: hourly partitions of ``readings`` created ahead and dropped whole; old dead letters pruned."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

import asyncpg

log = logging.getLogger(__name__)
HOUR_MS = 3_600_000
_PREFIX = "readings_p"
_LOCK_KEY = 0x6D6F6E70  # serialises partition DDL between daemons sharing one database


def partition_name(hour: int) -> str:
    """Table name for the hour starting at ``hour * HOUR_MS``.

    >>> partition_name(1796306400000 // HOUR_MS)
    'readings_p2026120314'
    """
    return _PREFIX + datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y%m%d%H")


def _hour_of_name(name: str) -> int | None:
    try:
        start = datetime.strptime(name.removeprefix(_PREFIX), "%Y%m%d%H").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(start.timestamp()) // 3600


async def existing_hours(conn: asyncpg.Connection) -> set[int]:
    """Hours that already have a partition."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'readings'::regclass"
    )
    return {h for r in rows if (h := _hour_of_name(r["relname"])) is not None}


async def ensure_partitions(conn: asyncpg.Connection, hours: Iterable[int]) -> list[int]:
    """Create the partitions for ``hours`` that do not exist yet; return those created."""
    wanted = sorted(set(hours))
    if not wanted:
        return []
    created: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        have = await existing_hours(conn)
        for hour in wanted:
            if hour in have:
                continue
            start = datetime.fromtimestamp(hour * 3600, UTC).isoformat()
            end = datetime.fromtimestamp((hour + 1) * 3600, UTC).isoformat()
            await conn.execute(
                f"CREATE TABLE {partition_name(hour)} PARTITION OF readings"
                f" FOR VALUES FROM ('{start}') TO ('{end}')"
            )
            created.append(hour)
    if created:
        log.info("partitions_created", extra={"count": len(created)})
    return created


async def drop_expired(conn: asyncpg.Connection, now_ms: int, retention_ms: int) -> list[str]:
    """Drop whole partitions whose every possible row is older than the retention.

    Never deletes row by row (CONTRACT.md §6).
    """
    cutoff_hour = (now_ms - retention_ms) // HOUR_MS  # partitions ending at or before this go
    dropped: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        for hour in sorted(await existing_hours(conn)):
            if hour + 1 <= cutoff_hour:
                name = partition_name(hour)
                await conn.execute(f"DROP TABLE {name}")
                dropped.append(name)
    if dropped:
        log.info("partitions_dropped", extra={"count": len(dropped)})
    return dropped


async def upkeep(conn: asyncpg.Connection, now_ms: int, retention_ms: int, ahead_hours: int) -> None:
    """One retention pass: partitions for the whole retention window and ``ahead_hours`` ahead."""
    now_hour = now_ms // HOUR_MS
    first = (now_ms - retention_ms) // HOUR_MS
    await ensure_partitions(conn, range(first, now_hour + ahead_hours + 1))
    await drop_expired(conn, now_ms, retention_ms)


async def prune_dead_letters(conn: asyncpg.Connection, ward: str, now_ms: int, keep_ms: int,
                             batch_rows: int = 10_000) -> int:
    """Delete this ward's dead letters received more than ``keep_ms`` ago; return how many.

    Rejected input is kept for inspection (CONTRACT.md §2), but not forever: a device that sends
    garbage at full speed must not fill the database's disk. The table is small in normal
    operation, so bounded deletes on its (ward, received_at) index do; each batch is its own
    statement so a large backlog never holds locks for long.
    """
    cutoff = now_ms - keep_ms  # timestamptz travels as epoch ms (pg_codecs)
    pruned = 0
    while True:
        status = await conn.execute(
            "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters "
            "WHERE ward = $1 AND received_at < $2 LIMIT $3)", ward, cutoff, batch_rows)
        deleted = int(status.rsplit(" ", 1)[-1])
        pruned += deleted
        if deleted < batch_rows:
            break
    if pruned:
        log.info("dead_letters_pruned", extra={"count": pruned})
    return pruned

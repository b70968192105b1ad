"""asyncpg connection setup shared by the writer and the readers: timestamps as epoch ms."""

from __future__ import annotations

import asyncpg

# PostgreSQL counts microseconds from 2000-01-01; MonitorMe counts milliseconds from 1970.
_PG_EPOCH_MS = 946_684_800_000


def _encode_ts(ms: int) -> tuple[int]:
    return ((ms - _PG_EPOCH_MS) * 1000,)


def _decode_ts(value: tuple[int]) -> int:
    return value[0] // 1000 + _PG_EPOCH_MS


async def init_connection(conn: asyncpg.Connection) -> None:
    """Make ``timestamptz`` travel as int epoch ms (no datetime objects on the hot path)."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode_ts, decoder=_decode_ts, format="tuple"
    )

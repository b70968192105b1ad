"""Spooled batches never strand: written at start before the state is restored, and by a waiting standby.

A spool holds batches whose MQTT messages were already acknowledged, so the broker will never send
them again: if the daemon that spooled them does not write them, they are lost. Two ways they
could wait on a disk: the daemon restarts (the batches must go in before patients, open alerts and
windows are restored from PostgreSQL), or it lost the ward to another daemon during the outage
and came back as a standby (it must write them while it waits, not when it next becomes active).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from monitorme.adapters.spool import Spool, SpooledBatch, encode
from monitorme.config import Settings
from monitorme.core.model import PatientId, Reading
from monitorme.runtime.app import Daemon, run_forever
from monitorme.runtime.lease import WardLease, lock_key
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def spool_some(settings: Settings, patient: str, n: int, batches: int = 3) -> int:
    """Leave ``batches`` spooled batches of ``n`` SpO2 readings each, as an earlier run would; return the count."""
    assert settings.spool_path is not None
    spool = Spool(settings.spool_path, 1 << 30)
    start = int(time.time() * 1000) - 60_000
    for b in range(batches):
        readings = [Reading(PatientId(patient), "spo2", start + 1000 * (b * n + i), 96.0) for i in range(n)]
        spool.append(encode(SpooledBatch(readings=readings, admitted=[PatientId(patient)] if b == 0 else [])))
    spool.close()
    return batches * n


async def count(dsn: str, ward: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readings WHERE ward = $1", ward))
    finally:
        await conn.close()


async def lease_is_held(dsn: str, ward: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        free = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(ward))
        if free:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key(ward))
        return not free
    finally:
        await conn.close()


@pytest.fixture
def settings(tmp_path: Path, ward: str, mqtt_url: str, pg_dsn: str) -> Settings:
    return make_settings(tmp_path, ward=ward, mqtt_url=mqtt_url, dsn=pg_dsn, protocol=broker_protocol(mqtt_url),
                         spool_dir=str(tmp_path / "spool"))


async def test_a_restart_writes_the_spool_before_restoring_patients_and_windows(
    settings: Settings, ward: str, pg_dsn: str
) -> None:
    spooled = spool_some(settings, "p9", 40)
    async with Daemon(settings) as daemon:
        assert "p9" in daemon.engine.patients  # admitted in the spool: known before intake starts
        assert await count(pg_dsn, ward) == spooled
        assert daemon.writer.spool is not None and daemon.writer.spool.batches == 0


async def test_a_standby_writes_what_it_spooled_while_another_daemon_has_the_ward(
    settings: Settings, ward: str, pg_dsn: str
) -> None:
    spooled = spool_some(settings, "p3", 50)
    other = WardLease(pg_dsn, ward)  # the daemon that took the ward over
    never = asyncio.Event()
    assert await other.acquire(never)
    stop = asyncio.Event()
    standby = asyncio.create_task(run_forever(settings, insecure_no_auth=True, stop=stop))
    try:
        deadline = time.monotonic() + 20
        while await count(pg_dsn, ward) < spooled and time.monotonic() < deadline:
            assert not standby.done(), standby.exception()
            await asyncio.sleep(0.1)
        assert await count(pg_dsn, ward) == spooled
        assert settings.spool_path is not None and not list(settings.spool_path.glob("*.batch"))
        assert not standby.done()  # still waiting: it wrote the spool without taking the ward

        await other.release()  # now it takes the ward, and the spool (given up by the replay) with it
        deadline = time.monotonic() + 20
        while not standby.done() and time.monotonic() < deadline:
            if await lease_is_held(pg_dsn, ward):
                break
            await asyncio.sleep(0.1)
        assert await lease_is_held(pg_dsn, ward)
        await asyncio.sleep(1.0)  # past the daemon's start, where a spool still owned would stop it
        assert not standby.done(), standby.exception()
    finally:
        stop.set()
        await asyncio.wait_for(standby, 30)
        await other.release()
    assert await count(pg_dsn, ward) == spooled  # written once

"""A restarted daemon picks up its open alerts: a condition already alerted is not raised twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import orjson
import pytest

from monitorme.sim.model import SimMessage
from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import make_settings, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def spo2(ward: str, ts: int, value: float) -> SimMessage:
    return SimMessage(f"monitorme/{ward}/p1/spo2", orjson.dumps({"ts": ts, "value": value}), ts, "p1", "spo2")


async def alert_rows(dsn: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id::text, state FROM alerts WHERE rule = 'spo2_low' ORDER BY raised_ts")
        return [(r["id"], r["state"]) for r in rows]
    finally:
        await conn.close()


async def wait_rows(dsn: str, predicate: object, timeout_s: float = 15) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout_s
    rows = await alert_rows(dsn)
    while not predicate(rows) and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.2)
        rows = await alert_rows(dsn)
    return rows


async def test_open_alert_survives_a_restart_and_resolves_once(
        tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    t0 = int(time.time() * 1000) - 600_000
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    async with running(settings):
        await asyncio.to_thread(publish, [spo2(ward, t0 + i * 5000, 87.0) for i in range(6)], tuned_mqtt_url)
        rows = await wait_rows(pg_dsn, lambda r: len(r) == 1)
    assert [state for _, state in rows] == ["raised"]
    (alert_id, _), = rows

    async with running(settings):  # a new process would do the same: state comes from PostgreSQL
        await asyncio.to_thread(publish, [spo2(ward, t0 + (6 + i) * 5000, 87.0) for i in range(6)],
                                tuned_mqtt_url)
        await asyncio.to_thread(publish, [spo2(ward, t0 + (12 + i) * 5000, 96.0) for i in range(6)],
                                tuned_mqtt_url)
        rows = await wait_rows(pg_dsn, lambda r: r and r[-1][1] == "resolved")
    assert rows == [(alert_id, "resolved")]  # the same alert, resolved once, never raised again


@pytest.mark.parametrize("restore_s", [180, 0])
async def test_a_condition_building_up_before_a_restart_keeps_its_time(
        tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str, restore_s: int) -> None:
    """spo2_low needs SpO2 < 90 % for 15 s. 5 s of it before a restart and 10 s after: with the
    windows restored from PostgreSQL the alert comes at 15 s; without (restore_s = 0) it cannot.

    Event time runs a few seconds ahead of the wall clock here, so that no wall-clock tick can
    complete the 15 s while the test runs: only the readings can."""
    t0 = int(time.time() * 1000) - 9_000
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url), analysis_restore_s=restore_s)
    async with running(settings) as daemon:
        await asyncio.to_thread(publish, [spo2(ward, t0 + i * 5000, 87.0) for i in range(2)], tuned_mqtt_url)
        for _ in range(50):
            if daemon.metrics.total("monitorme_stored_total") >= 2:
                break
            await asyncio.sleep(0.1)
    assert await alert_rows(pg_dsn) == []  # 5 s: not yet

    async with running(settings):
        await asyncio.to_thread(publish, [spo2(ward, t0 + i * 5000, 87.0) for i in range(2, 4)], tuned_mqtt_url)
        rows = await wait_rows(pg_dsn, lambda r: len(r) == 1, timeout_s=4 if restore_s else 3)
    assert [state for _, state in rows] == (["raised"] if restore_s else [])

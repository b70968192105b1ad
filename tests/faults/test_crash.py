"""kill -9 under load: nothing published at QoS 1 is lost, nothing stored twice, no alert raised twice.

The daemon runs as a real process against a private Mosquitto with the no-loss configuration and
its own database. A ward of 40 patients (every vital, ECG included) is published at 6x real time
while the daemon is killed with SIGKILL twice and started again at once. Only what the broker
acknowledged counts as published; afterwards the readings table must hold exactly that set.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import asyncpg
import orjson
import pytest

from monitorme.demo.services import MosquittoBroker, free_port
from monitorme.sim.model import SimMessage, generate_ward
from monitorme.sim.publisher import PublishStats, publish
from tests.faults.daemon_process import DaemonProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto to run a private broker"),
]


def desaturation(ward: str, start_ms: int, seconds: int) -> list[SimMessage]:
    """Patient 'crit' at SpO2 76 % throughout: one alert, open across both crashes."""
    return [SimMessage(f"monitorme/{ward}/crit/spo2", orjson.dumps({"ts": ts, "value": 76.0}), ts, "crit", "spo2")
            for ts in range(start_ms, start_ms + seconds * 1000, 5000)]


async def stored(dsn: str, ward: str) -> tuple[int, int, Counter[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM readings WHERE ward = $1", ward)
        distinct = await conn.fetchval(
            "SELECT count(*) FROM (SELECT DISTINCT patient_id, vital, ts, dedup FROM readings WHERE ward = $1) d", ward)
        per_vital = Counter({r["vital"]: r["n"] for r in await conn.fetch(
            "SELECT vital, count(*) AS n FROM readings WHERE ward = $1 GROUP BY vital", ward)})
        return total, distinct, per_vital
    finally:
        await conn.close()


async def raised_alerts(dsn: str, ward: str) -> Counter[str]:
    """How often each rule's alert for 'crit' was raised."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT doc->>'rule' AS rule FROM alert_events WHERE ward = $1"
                                " AND patient_id = 'crit' AND state = 'raised'", ward)
        return Counter(r["rule"] for r in rows)
    finally:
        await conn.close()


async def test_kill_9_twice_under_load_loses_nothing_and_stores_nothing_twice(
        tmp_path: Path, ward: str, pg_dsn: str) -> None:
    seconds = 30
    start_ms = int(time.time() * 1000) - seconds * 1000
    messages = sorted(list(generate_ward(ward, 40, start_ms, seconds, seed=3)) + desaturation(ward, start_ms, seconds),
                      key=lambda m: m.ts_ms)
    with MosquittoBroker() as broker:
        env = {"MONITORME_MQTT_URL": broker.url, "MONITORME_DATABASE_URL": pg_dsn, "MONITORME_WARD": ward,
               "MONITORME_HTTP": f"127.0.0.1:{free_port()}"}
        daemon = DaemonProcess(env)
        daemon.wait_event("mqtt_connected")
        result: list[PublishStats] = []
        publisher = threading.Thread(target=lambda: result.append(publish(messages, broker.url, qos=1, speed=6.0)))
        publisher.start()
        kills = 0
        for at in (1.5, 3.0):
            await asyncio.sleep(at - (1.5 if kills else 0))
            daemon.kill9()  # no shutdown, no flush, no acks: whatever was in memory is gone
            kills += 1
            daemon = DaemonProcess(env)
            daemon.wait_event("mqtt_connected")
        publisher.join(60)
        (stats,) = result
        assert stats.acked == stats.sent == len(messages)  # the broker took every reading
        deadline = time.monotonic() + 60
        total, distinct, per_vital = await stored(pg_dsn, ward)
        while total < len(messages) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            total, distinct, per_vital = await stored(pg_dsn, ward)
        await asyncio.sleep(1.0)  # anything extra would arrive now
        total, distinct, per_vital = await stored(pg_dsn, ward)
        raised = await raised_alerts(pg_dsn, ward)
        assert daemon.stop() == 0
    sent = Counter(m.vital for m in messages)
    print(f"kill -9 x{kills}: published {len(messages)}, stored {total} ({distinct} distinct), raised {dict(raised)}")
    assert kills == 2
    assert total == distinct == len(messages), f"published {len(messages)}, stored {total} ({distinct} distinct)"
    assert per_vital == sent  # every vital, ECG chunks included
    assert raised and set(raised.values()) == {1}, f"raised more than once across two crashes: {raised}"

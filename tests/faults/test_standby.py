"""Hot standby: two daemons for one ward; the holder of the ward's lock works, the other waits.

Both are real processes against one private Mosquitto and one database. The active one is
killed with SIGKILL while the ward publishes; the standby must take over (lock, MQTT session,
consuming) within 5 s, and every reading the broker acknowledged must be stored exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from monitorme.demo.services import MosquittoBroker, free_port
from monitorme.sim.model import generate_ward
from monitorme.sim.publisher import PublishStats, publish
from tests.faults.daemon_process import DaemonProcess
from tests.faults.test_crash import stored

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto to run a private broker"),
]


async def test_standby_takes_over_within_5_s_and_nothing_is_lost(tmp_path: Path, ward: str, pg_dsn: str) -> None:
    now = int(time.time() * 1000)
    messages = list(generate_ward(ward, 30, now - 20_000, 20, seed=8))
    with MosquittoBroker() as broker:
        def daemon() -> DaemonProcess:
            return DaemonProcess({"MONITORME_MQTT_URL": broker.url, "MONITORME_DATABASE_URL": pg_dsn,
                                  "MONITORME_WARD": ward, "MONITORME_HTTP": f"127.0.0.1:{free_port()}",
                                  "MONITORME_SPOOL_DIR": str(tmp_path / "spool")})

        active = daemon()
        active.wait_event("mqtt_connected")
        standby = daemon()
        standby.wait_event("standby_waiting")
        await asyncio.sleep(1.5)
        assert not [r for r in standby.records if r.get("event") == "mqtt_connected"]  # it only waits

        result: list[PublishStats] = []
        load = threading.Thread(target=lambda: result.append(publish(messages, broker.url, qos=1, speed=4.0)))
        load.start()
        await asyncio.sleep(2.0)
        active.kill9()
        killed = time.monotonic()
        await asyncio.to_thread(standby.wait_event, "mqtt_connected", 10)
        takeover_s = time.monotonic() - killed
        print(f"standby took over {takeover_s:.2f} s after kill -9")
        load.join(30)
        deadline = time.monotonic() + 30
        total, distinct, _ = await stored(pg_dsn, ward)
        while total < len(messages) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            total, distinct, _ = await stored(pg_dsn, ward)
        await asyncio.sleep(1.0)
        total, distinct, _ = await stored(pg_dsn, ward)
        assert standby.stop() == 0
    (stats,) = result
    assert stats.acked == len(messages)
    assert takeover_s <= 5.0, f"the standby took {takeover_s:.1f} s to take over"
    assert [r["event"] for r in standby.records if r.get("event") in ("standby_waiting", "lease_acquired")] == [
        "standby_waiting", "lease_acquired"]
    assert total == distinct == len(messages), f"published {len(messages)}, stored {total} ({distinct} distinct)"

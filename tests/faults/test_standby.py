"""Hot standby: two daemons for one ward; the holder of the ward's lock works, the other waits.

Both are real processes against one private Mosquitto and one database. The active one is
killed with SIGKILL while the ward publishes; the standby must take over (lock, MQTT session,
consuming) within 5 s, and every reading the broker acknowledged must be stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from monitorme.demo.services import MosquittoBroker, free_port
from monitorme.sim.model import generate_ward
from monitorme.sim.publisher import PublishStats, publish
from tests.faults.daemon_process import DaemonProcess
from tests.faults.test_crash import stored


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if body.startswith(b"{") else {}


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
        standby_port = free_port()
        standby = DaemonProcess({"MONITORME_MQTT_URL": broker.url, "MONITORME_DATABASE_URL": pg_dsn,
                                 "MONITORME_WARD": ward, "MONITORME_HTTP": f"127.0.0.1:{standby_port}",
                                 "MONITORME_SPOOL_DIR": str(tmp_path / "spool")})
        standby.wait_event("standby_waiting")
        await asyncio.sleep(1.5)
        assert not [r for r in standby.records if r.get("event") == "mqtt_connected"]  # it only waits
        waiting = (get(standby_port, "/healthz"), get(standby_port, "/readyz"), get(standby_port, "/api/patients"),
                   get(standby_port, "/servingz"))

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
        taken_over = get(standby_port, "/servingz")
        deadline = time.monotonic() + 30
        total, distinct, _ = await stored(pg_dsn, ward)
        while total < len(messages) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            total, distinct, _ = await stored(pg_dsn, ward)
        await asyncio.sleep(1.0)
        total, distinct, _ = await stored(pg_dsn, ward)
        assert standby.stop() == 0
    (stats,) = result
    print(f"standby: published {len(messages)}, stored {total} ({distinct} distinct)")
    assert waiting[0] == (200, {"status": "ok", "role": "standby"})  # alive, for probes and supervisors
    assert waiting[1][0] == 503 and waiting[1][1]["standby"] is True  # but not to be sent traffic
    assert waiting[2][0] == 404  # and it serves nothing else
    assert waiting[3][0] == 503  # what a load balancer asks: not this one
    assert taken_over[0] == 200
    assert stats.acked == len(messages)
    assert takeover_s <= 5.0, f"the standby took {takeover_s:.1f} s to take over"
    assert [r["event"] for r in standby.records if r.get("event") in ("standby_waiting", "lease_acquired")] == [
        "standby_waiting", "lease_acquired"]
    assert total == distinct == len(messages), f"published {len(messages)}, stored {total} ({distinct} distinct)"

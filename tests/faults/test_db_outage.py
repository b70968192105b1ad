"""PostgreSQL stopped for 60 s under load: alerts stay real time, readings wait in the spool, none lost.

Its own PostgreSQL (pgserver, stopped and started on the same data directory), a private
Mosquitto, the daemon as a real process with a spool directory. A ward of 20 patients publishes
in real time throughout. While the database is down a patient desaturates: the alert must reach
MQTT and the station screen within a second, /readyz must say the database is not ready, and
batches must be spooled (and their messages acknowledged). When the database is back the spool
drains and every reading the broker acknowledged is stored exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from monitorme.demo.services import EmbeddedPostgres, MosquittoBroker, free_port
from monitorme.sim.model import SimMessage, generate_ward
from monitorme.sim.publisher import PublishStats, publish
from tests.faults.daemon_process import DaemonProcess
from tests.faults.test_crash import stored

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto to run a private broker"),
]
OUTAGE_S = 60


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(value)
    return out


def readyz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return dict(orjson.loads(r.read()))
    except urllib.error.HTTPError as e:
        return dict(orjson.loads(e.read()))


class AlertFeed:
    """Alerts on MQTT, with when they arrived."""

    def __init__(self, broker: MosquittoBroker, ward: str) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda _c, _u, m: self.got.append((time.time(), orjson.loads(m.payload)))
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(f"monitorme/{ward}/+/alerts", qos=1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_sixty_seconds_without_postgresql(tmp_path: Path, ward: str) -> None:
    now = int(time.time() * 1000)
    ward_load = list(generate_ward(ward, 20, now, OUTAGE_S + 25, seed=6))
    pg = EmbeddedPostgres(tmp_path / "pgdata").start()
    try:
        with MosquittoBroker() as broker:
            port = free_port()
            daemon = DaemonProcess({"MONITORME_MQTT_URL": broker.url, "MONITORME_DATABASE_URL": pg.dsn,
                                    "MONITORME_WARD": ward, "MONITORME_HTTP": f"127.0.0.1:{port}",
                                    "MONITORME_SPOOL_DIR": str(tmp_path / "spool")})
            daemon.wait_event("mqtt_connected")
            feed = AlertFeed(broker, ward)
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.put(f"{url}/api/patients/crit", json={"station": "s1"}) as r:
                    assert r.status == 200
                screen = await http.ws_connect(f"{url.replace('http', 'ws')}/ws/stations/s1")
                frames: list[tuple[float, dict[str, Any]]] = []

                async def read() -> None:
                    async for msg in screen:
                        frames.append((time.time(), orjson.loads(msg.data)))

                reader = asyncio.create_task(read())
                published: list[PublishStats] = []
                load = threading.Thread(target=lambda: published.append(
                    publish(ward_load, broker.url, qos=1, speed=1.0)))
                load.start()
                await asyncio.sleep(5)

                await asyncio.to_thread(pg.stop)  # the outage
                outage_started = time.monotonic()
                await asyncio.sleep(3)
                assert daemon.proc.poll() is None, "daemon died in the outage:\n" + "\n".join(daemon.tail)
                during = readyz(port)
                sent_at = time.time()
                ts = int(sent_at * 1000)
                crit = [SimMessage(f"monitorme/{ward}/crit/spo2", orjson.dumps({"ts": ts, "value": 75.0}), ts,
                                   "crit", "spo2")]
                await asyncio.to_thread(publish, crit, broker.url, qos=1)
                await asyncio.sleep(2)
                on_mqtt = [at - sent_at for at, a in feed.got if a["patient"] == "crit" and a["state"] == "raised"]
                on_screen = [at - sent_at for at, f in frames if f.get("type") == "alert"
                             and f["alert"]["patient"] == "crit"]
                await asyncio.sleep(OUTAGE_S / 2)
                mid = metrics(port)
                await asyncio.sleep(OUTAGE_S - (time.monotonic() - outage_started))
                await asyncio.to_thread(pg.start)  # back, same data directory and socket

                load.join(OUTAGE_S + 60)
                expected = len(ward_load) + len(crit)
                deadline = time.monotonic() + 60
                total, distinct, _ = await stored(pg.dsn, ward)
                while total < expected and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    total, distinct, _ = await stored(pg.dsn, ward)
                await asyncio.sleep(3)  # the readiness ping runs every 2 s
                total, distinct, _ = await stored(pg.dsn, ward)
                after = metrics(port)
                ready_after = readyz(port)
                await screen.close()
                reader.cancel()
            feed.close()
            assert daemon.stop() == 0
    finally:
        pg.stop()
    (stats,) = published
    print(f"{OUTAGE_S} s without PostgreSQL: published {expected}, stored {total} ({distinct} distinct); alert on"
          f" MQTT after {[round(x * 1000, 1) for x in on_mqtt[:1]]} ms, on the screen after"
          f" {[round(x * 1000, 1) for x in on_screen[:1]]} ms; spooled"
          f" {mid['monitorme_spooled_batches_total']:.0f} batches"
          f" ({mid['monitorme_spool_bytes']:.0f} bytes at mid-outage)")
    assert stats.acked == len(ward_load)
    assert during["ready"] is False and during["database"] is False and during["broker"] is True
    assert on_mqtt and on_mqtt[0] < 1.0, f"alert on MQTT during the outage after {on_mqtt}"
    assert on_screen and on_screen[0] < 1.0, f"alert on the station screen during the outage after {on_screen}"
    assert mid["monitorme_spooled_batches_total"] > 0 and mid["monitorme_spool_bytes"] > 0
    assert after["monitorme_spool_batches"] == 0 and after["monitorme_spool_bytes"] == 0  # drained
    assert ready_after["ready"] is True
    assert total == distinct == expected, f"published {expected}, stored {total} ({distinct} distinct)"

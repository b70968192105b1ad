"""Mosquitto restarted while the daemon drains a backlog and the ward keeps publishing: nothing lost.

A private broker with the recommended configuration (docs/mosquitto.conf: unlimited queues,
persistence, TCP_NODELAY; see MosquittoBroker). The daemon is a real process. While it works
through 40 patients' backlog the broker is restarted (SIGTERM, so it saves its persistent
sessions, then started again on the same port); then the ward publishes live again. /readyz
must say "not ready" while the broker is away, and every reading the broker acknowledged must be
stored exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest

from monitorme.demo.services import MosquittoBroker, free_port
from monitorme.sim.model import generate_ward
from monitorme.sim.publisher import publish
from tests.faults.daemon_process import DaemonProcess
from tests.faults.test_crash import stored

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto to run a private broker"),
]


class StatusWatcher:
    """A station screen's WebSocket in a thread: the feed states it was told (hello, then status frames)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[dict[str, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.seen and time.monotonic() < deadline:
            time.sleep(0.05)

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"ws://127.0.0.1:{self.port}/ws/stations/s1") as ws:
            while not self.stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.2)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                frame = orjson.loads(msg.data)
                if frame["type"] == "hello":
                    self.seen.append(frame["feed"])
                elif frame["type"] == "status":
                    self.seen.append({"broker": frame["broker"], "database": frame["database"]})

    def close(self) -> list[dict[str, bool]]:
        self.stop.set()
        self.thread.join(5)
        return self.seen


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


async def test_broker_restart_under_load_loses_nothing(tmp_path: Path, ward: str, pg_dsn: str) -> None:
    now = int(time.time() * 1000)
    backlog = list(generate_ward(ward, 40, now - 120_000, 60, seed=4))
    live = list(generate_ward(ward, 40, now - 60_000, 30, seed=5))
    with MosquittoBroker() as broker:
        port = free_port()
        daemon = DaemonProcess({"MONITORME_MQTT_URL": broker.url, "MONITORME_DATABASE_URL": pg_dsn,
                                "MONITORME_WARD": ward, "MONITORME_HTTP": f"127.0.0.1:{port}"})
        daemon.wait_event("mqtt_connected")
        assert ready(port)
        screen = StatusWatcher(port)
        first = await asyncio.to_thread(publish, backlog, broker.url, qos=1)
        await asyncio.to_thread(broker.stop)  # mid-drain: the daemon holds unacknowledged messages
        down_seen = False
        for _ in range(50):
            if not ready(port):
                down_seen = True
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(broker.start)
        daemon.wait_event("mqtt_connected", 60)  # the reconnect, with backoff
        second = await asyncio.to_thread(publish, live, broker.url, qos=1, speed=10.0)
        expected = len(backlog) + len(live)
        deadline = time.monotonic() + 60
        total, distinct, _ = await stored(pg_dsn, ward)
        while total < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            total, distinct, _ = await stored(pg_dsn, ward)
        await asyncio.sleep(1.0)
        total, distinct, _ = await stored(pg_dsn, ward)
        back_ready = ready(port)
        statuses = screen.close()
        assert daemon.stop() == 0
    print(f"broker restart: published {expected}, stored {total} ({distinct} distinct), screen statuses {statuses}")
    assert first.acked == len(backlog) and second.acked == len(live)
    assert down_seen, "/readyz kept saying ready while the broker was down"
    assert back_ready
    # the station screen was told plainly: first a feed in order, then the broker gone, then back
    assert statuses[0] == {"broker": True, "database": True}
    assert {"broker": False, "database": True} in statuses and statuses[-1] == {"broker": True, "database": True}
    assert total == distinct == expected, f"published {expected}, stored {total} ({distinct} distinct)"
    reconnects = [r for r in daemon.records if r.get("event") == "mqtt_reconnect"]
    assert reconnects, "the daemon never noticed the broker going away"

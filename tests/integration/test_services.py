"""The throw-away services behind the test fixtures and `monitorme demo` do what they promise."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from monitorme.demo.services import EmbeddedBroker, EmbeddedPostgres, MosquittoBroker

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


def _pg_processes(datadir: Path) -> str:
    found = subprocess.run(["pgrep", "-af", str(datadir)], capture_output=True, text=True)
    return found.stdout.strip()


def test_embedded_postgres_answers_then_stops_without_leftovers(tmp_path: Path) -> None:
    datadir = tmp_path / "pgdata"

    async def query(dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            value: int = await conn.fetchval("SELECT 40 + 2")
            return value
        finally:
            await conn.close()

    with EmbeddedPostgres(datadir) as pg:
        assert pg.dsn.startswith("postgresql://postgres@")
        assert asyncio.run(query(pg.dsn)) == 42
        assert _pg_processes(datadir)

    assert _pg_processes(datadir) == ""


class _Subscriber:
    """A paho QoS 1 subscriber collecting payloads; clean_session False keeps its queue."""

    def __init__(self, url: str, client_id: str, topic: str, expected: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.topic = topic
        self.expected = expected
        self.client_id = client_id
        self.received: list[bytes] = []
        self.all_received = threading.Event()
        self.subscribed = threading.Event()
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False
        )
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: self.subscribed.set()
        return client

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.received.append(bytes(msg.payload))
        if len(self.received) >= self.expected:
            self.all_received.set()

    @contextmanager
    def connected(self) -> Iterator[None]:
        # A new paho client per connection: a second loop_start() on one client leaks a socketpair.
        self.client = self._new_client()
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        try:
            yield
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def subscribe(self) -> None:
        self.client.subscribe(self.topic, qos=1)
        assert self.subscribed.wait(TIMEOUT_S)


def _publish(url: str, topic: str, payloads: list[bytes]) -> None:
    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(1000)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(TIMEOUT_S)  # returns at PUBACK
    finally:
        client.disconnect()
        client.loop_stop()


def _queued_while_offline(
    url: str, ward: str, count: int, restart: MosquittoBroker | None = None
) -> list[bytes]:
    """Subscribe, go offline, publish `count` QoS 1 messages, (restart the broker,) reconnect."""
    topic = f"monitorme/{ward}/p1/hr"
    subscriber = _Subscriber(url, f"sub-{ward}", f"monitorme/{ward}/#", count)
    with subscriber.connected():
        subscriber.subscribe()
    payloads = [str(i).encode() for i in range(count)]
    _publish(url, topic, payloads)
    if restart is not None:
        restart.restart()
    with subscriber.connected():
        subscriber.all_received.wait(TIMEOUT_S)
    assert len(subscriber.received) == count
    return subscriber.received


@pytest.mark.skipif(not MosquittoBroker.available(), reason="mosquitto is not installed")
@pytest.mark.parametrize("restart", [False, True], ids=["steady", "broker_restart"])
def test_mosquitto_keeps_5000_messages_for_an_offline_persistent_session(
    ward: str, restart: bool
) -> None:
    # Stock mosquitto keeps only 1,000 per client; this broker must keep them all, in order,
    # and (via SIGTERM's persistence save) across a restart on the same port.
    with MosquittoBroker() as broker:
        received = _queued_while_offline(
            broker.url, ward, 5000, restart=broker if restart else None
        )
        assert broker.running
    assert received == [str(i).encode() for i in range(5000)]


def test_embedded_broker_round_trips_qos1(ward: str) -> None:
    with EmbeddedBroker() as broker:
        subscriber = _Subscriber(broker.url, f"sub-{ward}", f"monitorme/{ward}/#", 3)
        with subscriber.connected():
            subscriber.subscribe()
            _publish(broker.url, f"monitorme/{ward}/p1/hr", [b"a", b"b", b"c"])
            assert subscriber.all_received.wait(TIMEOUT_S)
    assert sorted(subscriber.received) == [b"a", b"b", b"c"]


def test_embedded_broker_keeps_messages_for_an_offline_persistent_session(ward: str) -> None:
    with EmbeddedBroker() as broker:
        received = _queued_while_offline(broker.url, ward, 50)
    assert sorted(received) == sorted(str(i).encode() for i in range(50))


_seen_databases: list[str] = []


@pytest.mark.parametrize("turn", [1, 2])
def test_pg_dsn_gives_each_test_its_own_fresh_database(pg_dsn: str, turn: int) -> None:
    async def claim() -> str:
        conn = await asyncpg.connect(pg_dsn)
        try:
            leftover = await conn.fetchval("SELECT to_regclass('public.claimed_by_a_test')")
            assert leftover is None, "the database was not fresh"
            await conn.execute("CREATE TABLE claimed_by_a_test (turn int)")
            name: str = await conn.fetchval("SELECT current_database()")
            return name
        finally:
            await conn.close()

    name = asyncio.run(claim())
    assert name not in _seen_databases
    _seen_databases.append(name)

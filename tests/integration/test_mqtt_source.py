"""The MQTT source against a real broker: acks only when told, reconnects by itself."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from monitorme.adapters.mqtt_source import MqttSettings, MqttSource
from monitorme.core.model import RawMessage
from monitorme.demo.services import MosquittoBroker
from monitorme.metrics import Metrics
from monitorme.sim.model import SimMessage
from monitorme.sim.publisher import publish

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio,
    pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto for MQTT 5 and restarts"),
]


def messages(ward: str, n: int, start: int = 0) -> list[SimMessage]:
    return [
        SimMessage(f"monitorme/{ward}/p1/heart_rate", orjson.dumps({"ts": i, "value": 70}), i, "p1", "heart_rate")
        for i in range(start, start + n)
    ]


async def receive(source: MqttSource, n: int, timeout_s: float = 10) -> list[RawMessage]:
    got: list[RawMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += source.take(10_000)
        await asyncio.sleep(0.02)
    return got


async def run_source(url: str, ward: str) -> tuple[MqttSource, asyncio.Event, asyncio.Task[None]]:
    source = MqttSource(MqttSettings(url=url, ward=ward, client_id=f"test-{ward}"), Metrics())
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    for _ in range(200):
        if source.connected:
            break
        await asyncio.sleep(0.025)
    await asyncio.sleep(0.2)  # SUBACK
    assert source.connected
    return source, stop, task


async def test_unacknowledged_messages_come_back_acknowledged_ones_do_not(ward: str) -> None:
    with MosquittoBroker() as broker:
        source, stop, task = await run_source(broker.url, ward)
        await asyncio.to_thread(publish, messages(ward, 100), broker.url, qos=1)
        first = await receive(source, 100)
        assert len(first) == 100
        # the batch holding the first 60 became durable; the rest did not before we went away
        source.ack([m.ack for m in first[:60]])
        await source.drain_acks()
        stop.set()
        await task

        source, stop, task = await run_source(broker.url, ward)
        again = await receive(source, 40, timeout_s=5)
        stop.set()
        await task
    assert sorted(m.payload for m in again) == sorted(m.payload for m in first[60:])


async def test_source_reconnects_after_a_broker_restart(ward: str) -> None:
    with MosquittoBroker() as broker:
        source, stop, task = await run_source(broker.url, ward)
        await asyncio.to_thread(broker.restart)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if source.connected and source.metrics.get("monitorme_mqtt_reconnects_total") >= 1:
                break
            await asyncio.sleep(0.05)
        assert source.connected
        await asyncio.sleep(0.2)
        await asyncio.to_thread(publish, messages(ward, 10), broker.url, qos=1)
        got = await receive(source, 10)
        stop.set()
        await task
    assert len(got) == 10


async def test_reading_pauses_when_too_much_is_waiting_and_resumes_when_taken(ward: str) -> None:
    with MosquittoBroker() as broker:
        settings = MqttSettings(url=broker.url, ward=ward, client_id=f"test-{ward}", max_buffered=100)
        source = MqttSource(settings, Metrics())
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(stop))
        while not source.connected:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(publish, messages(ward, 1000), broker.url, qos=1)
        await asyncio.sleep(0.5)
        held = len(source)  # nobody takes: the source stops reading at its bound
        got: list[RawMessage] = []
        deadline = time.monotonic() + 10
        while len(got) < 1000 and time.monotonic() < deadline:
            batch = source.take(10_000)
            got += batch
            source.ack([m.ack for m in batch])
            await asyncio.sleep(0.01)
        stop.set()
        await task
    assert 100 <= held < 1000
    assert source.metrics.get("monitorme_mqtt_read_pauses_total") >= 1
    assert len(got) == 1000 and len({m.payload for m in got}) == 1000  # all of them, once, after resuming

"""Ingest-path alternatives, measured before choosing: QoS 1 backlog drains by bare subscribers.

    python -m bench.ingest_paths [--patients 500] [--seconds 20] [--json bench/results/ingest_paths.json]

Issue 5 asked to measure, where the MQTT client is the ceiling: paho's own network loop handing
batches to asyncio, gmqtt, MQTT 5 Receive Maximum and Mosquitto's in-flight settings, several
connections with wildcard subsets. Every row drains the same backlog (500 patients x S s, the
hospital mix with ECG) from a persistent session on a private Mosquitto, counting messages; none
decodes or stores (bench.ingest and bench.suite time the daemon end to end). Rows:

- ``wire rx=R inflight=I``: our protocol (monitorme.adapters.mqtt_wire), MQTT 5, Receive Maximum R,
  against a broker with ``max_inflight_messages I`` (0 = unlimited), PUBACKs batched once per read;
- ``wire x4 subsets``: four wire connections, each subscribed to a quarter of the patients
  (``monitorme/{ward}/p0+`` style filters are not possible, so per-patient topics are spread over
  four wards' worth of the same backlog: the aggregate rate of four sessions);
- ``paho thread -> asyncio``: paho's network thread appends to a list and hands batches to the
  loop with one ``call_soon_threadsafe`` per read (acknowledged by paho on receipt);
- ``gmqtt``: gmqtt 0.8 (asyncio, MQTT 5), acknowledging on return from ``on_message``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import uvloop
from paho.mqtt.enums import CallbackAPIVersion

from bench import ingest
from bench.ingest import BASE_WARD, Collected, _for_ward, _publish_all
from monitorme.demo.services import MosquittoBroker
from monitorme.sim.model import SimMessage, generate_ward
from monitorme.sim.publisher import parse_url


def wire_drain(url: str, backlog: Sequence[SimMessage], receive_maximum: int, connections: int = 1) -> float:
    tag = secrets.token_hex(2)
    wards = [f"w{tag}{i}" for i in range(connections)]
    uvloop.run(ingest.wire_sessions(url, wards, receive_maximum))
    share = len(backlog) // connections
    for i, ward in enumerate(wards):
        _publish_all(_for_ward(backlog[i * share:(i + 1) * share], ward), url, Collected())
    return uvloop.run(ingest.wire_reconnect_drain(url, wards, share * connections, receive_maximum)).rate


def paho_thread_drain(url: str, backlog: Sequence[SimMessage]) -> float:
    broker = parse_url(url)
    ward = f"pt{secrets.token_hex(2)}"
    client_id = f"paths-{ward}"

    def client() -> mqtt.Client:
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.max_inflight_messages_set(1000)
        return c

    c = client()
    c.connect(broker.host, broker.port)
    c.subscribe(f"monitorme/{ward}/#", qos=1)
    c.loop(1.0)
    c.loop(0.2)
    c.disconnect()
    _publish_all(_for_ward(backlog, ward), url, Collected())
    total = len(backlog)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        buffer: list[Any] = []
        lock = threading.Lock()
        counted = 0

        def take() -> None:  # in the loop: one call per hand-over, not per message
            nonlocal buffer, counted
            with lock:
                batch, buffer = buffer, []
            counted += len(batch)
            if counted >= total and not done.done():
                done.set_result(time.perf_counter())

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:  # paho's thread
            with lock:
                first = not buffer
                buffer.append(msg)
            if first:
                loop.call_soon_threadsafe(take)

        sub = client()
        sub.on_message = on_message
        started = time.perf_counter()
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        ended = await asyncio.wait_for(done, 120)
        sub.loop_stop()
        sub.disconnect()
        return total / (ended - started)

    return uvloop.run(run())


def gmqtt_drain(url: str, backlog: Sequence[SimMessage]) -> float | None:
    try:
        from gmqtt import Client
    except ImportError:
        return None
    broker = parse_url(url)
    ward = f"gm{secrets.token_hex(2)}"
    total = len(backlog)

    async def session() -> None:
        c = Client(f"paths-{ward}", clean_session=False, session_expiry_interval=86_400, receive_maximum=20_000)
        await c.connect(broker.host, broker.port)
        c.subscribe(f"monitorme/{ward}/#", qos=1)
        await asyncio.sleep(0.3)
        await c.disconnect()

    async def run() -> float:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        received = 0

        def on_message(_c: Any, _topic: str, _payload: bytes, _qos: int, _props: Any) -> int:
            nonlocal received
            received += 1
            if received == total and not done.done():
                done.set_result(time.perf_counter())
            return 0

        c = Client(f"paths-{ward}", clean_session=False, session_expiry_interval=86_400, receive_maximum=20_000)
        c.on_message = on_message
        started = time.perf_counter()
        await c.connect(broker.host, broker.port)
        ended = await asyncio.wait_for(done, 120)
        await c.disconnect()
        return total / (ended - started)

    uvloop.run(session())
    _publish_all(_for_ward(backlog, ward), url, Collected())
    return uvloop.run(run())


def run(patients: int, seconds: float) -> dict[str, Any]:
    start_ms = int(time.time() * 1000) - int(seconds * 1000) - 60_000
    backlog = [replace(m) for m in generate_ward(BASE_WARD, patients, start_ms, seconds)]
    rows: dict[str, float | None] = {}
    for inflight in (20, 1000, 0):
        with MosquittoBroker(max_inflight_messages=inflight) as broker:
            for rx in (100, 1000, 20_000):
                rows[f"wire rx={rx} inflight={inflight or 'unlimited'}"] = wire_drain(broker.url, backlog, rx)
                print(f"{list(rows)[-1]}: {list(rows.values())[-1]:,.0f} msg/s", file=sys.stderr)
    with MosquittoBroker() as broker:
        rows["wire x4 connections, quarter of the patients each"] = wire_drain(broker.url, backlog, 20_000, 4)
        rows["paho thread -> asyncio, batch per read"] = paho_thread_drain(broker.url, backlog)
        rows["gmqtt 0.8, MQTT 5"] = gmqtt_drain(broker.url, backlog)
    return {"patients": patients, "seconds": seconds, "messages": len(backlog),
            "msg_per_s": {k: (round(v) if v else None) for k, v in rows.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", default="bench/results/ingest_paths.json")
    args = parser.parse_args(argv)
    report = run(args.patients, args.seconds)
    for name, rate in report["msg_per_s"].items():
        print(f"{name:<55} {rate if rate is None else f'{rate:>10,}'} msg/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

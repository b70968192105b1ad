"""Publish -> station screen latency at hospital load: 25 stations x 20 patients, one screen each.

    python -m bench.station_latency [--seconds 60] [--json bench/results/station_latency.json]

The daemon (its own process) analyses the whole ward published in real time by another process
(``monitorme simulate --patients 500``, ≈ 2,130 msg/s). Every patient is assigned to one of 25
stations (20 each), and one WebSocket screen per station is connected. A probe patient per station
gets a heart-rate reading 5 times a second; each is timed from publish to the ``vitals`` frame that
carries it on its station's screen (the hub coalesces per 50 ms, so ~25 ms of the p50 is by design).
Goal (issue 4): p99 ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.alert_latency import percentile
from bench.ingest import REPO, _admin_dsn, _cpu_s, _Daemon, _execute
from monitorme.demo.services import MosquittoBroker, free_port, with_database

STATIONS = 25


async def measure(url: str, broker_port: int, ward: str, seconds: float) -> list[float]:
    sent: dict[tuple[str, int], float] = {}
    latencies: list[float] = []
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker_port)
    pub.loop_start()
    async with aiohttp.ClientSession() as http:
        for i in range(500):  # p001..p500 round robin over s01..s25, plus one probe patient each
            async with http.put(f"{url}/api/patients/p{i + 1:03d}", json={"station": f"s{i % STATIONS + 1:02d}"}) as r:
                assert r.status == 200
        for s in range(STATIONS):
            async with http.put(f"{url}/api/patients/probe{s + 1:02d}", json={"station": f"s{s + 1:02d}"}) as r:
                assert r.status == 200
        sockets = [await http.ws_connect(f"{url.replace('http', 'ws')}/ws/stations/s{s + 1:02d}", max_msg_size=0)
                   for s in range(STATIONS)]

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                now = time.time()
                frame = orjson.loads(msg.data)
                if frame["type"] != "vitals":
                    continue
                for r in frame["readings"]:
                    at = sent.pop((r["patient"], r["ts"]), None)
                    if at is not None:
                        latencies.append((now - at) * 1000)

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for s in range(STATIONS):
                ts = int(time.time() * 1000)
                patient = f"probe{s + 1:02d}"
                sent[(patient, ts)] = time.time()
                pub.publish(f"monitorme/{ward}/{patient}/heart_rate", orjson.dumps({"ts": ts, "value": 75.0}), qos=1)
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        for ws in sockets:
            await ws.close()
        for task in readers:
            task.cancel()
    pub.loop_stop()
    pub.disconnect()
    return latencies


def run(seconds: float) -> dict[str, Any]:
    ward = f"st{secrets.token_hex(3)}"
    with MosquittoBroker() as broker, _admin_dsn() as admin:
        name = f"monitorme_bench_{secrets.token_hex(4)}"
        asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
        try:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
            env.update(MONITORME_MQTT_URL=broker.url, MONITORME_DATABASE_URL=with_database(admin, name),
                       MONITORME_WARD=ward, MONITORME_HTTP=f"127.0.0.1:{port}", MONITORME_LOG_FORMAT="json")
            daemon = _Daemon(env, port)
            try:
                daemon.wait_event("mqtt_connected", 60)
                load = subprocess.Popen(
                    [sys.executable, "-m", "monitorme", "simulate", "--ward", ward, "--patients", "500",
                     "--speed", "1", "--duration", str(seconds + 40), "--url", broker.url],
                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                time.sleep(10)
                cpu0, wall0 = _cpu_s(daemon.ps), time.monotonic()
                latencies = asyncio.run(measure(f"http://127.0.0.1:{port}", broker.port, ward, seconds))
                cpu_share = (_cpu_s(daemon.ps) - cpu0) / (time.monotonic() - wall0)
                load.terminate()
                load.communicate(timeout=30)
            finally:
                code = daemon.stop()
        finally:
            asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return {
        "stations": STATIONS, "patients": 500, "seconds": seconds, "readings_timed": len(latencies),
        "publish_to_screen_ms": {"p50": round(percentile(latencies, 50), 2), "p99": round(percentile(latencies, 99), 2),
                                 "max": round(max(latencies), 2)} if latencies else None,
        "daemon_cpu_share_of_one_core": round(cpu_share, 3), "daemon_exit_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", default="bench/results/station_latency.json")
    args = parser.parse_args(argv)
    report = run(args.seconds)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0 if report["publish_to_screen_ms"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Alert latency at hospital load: a breaching reading published -> its alert received on MQTT.

    python -m bench.alert_latency [--patients 500] [--seconds 60] [--json bench/results/alert_latency.json]

One private Mosquitto, a fresh database, ``monitorme run`` as its own process. Another process
(``monitorme simulate``) publishes the whole ward in real time at the CONTRACT.md device periods
(500 patients ≈ 2,110 messages/s, ECG included). Meanwhile 50 extra patients each publish, every
2 s, a glucose reading of 65 mg/dL (``glucose_low``, raised on the reading itself: no rule delay)
and 1 s later one of 110 (resolved). A subscriber to ``monitorme/{ward}/+/alerts`` matches each
raised alert to its reading by (patient, ts) and measures publish -> receive on the wall clock of
this one machine. Also reported: the daemon's CPU share over the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.ingest import REPO, _admin_dsn, _cpu_s, _Daemon, _execute
from monitorme.demo.services import MosquittoBroker, free_port, with_database

LAT_PATIENTS = 50


class Probe:
    """Publishes breaching glucose readings and times their alerts."""

    def __init__(self, url_port: int, ward: str) -> None:
        self.ward = ward
        self.sent: dict[tuple[str, int], float] = {}
        self.latency_ms: list[float] = []
        self.detect_ms: list[float] = []  # publish -> the daemon decided (its wall clock)
        self.signal_ms: list[float] = []  # the daemon decided -> received here
        self.lock = threading.Lock()
        self.pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.pub.max_inflight_messages_set(1000)
        self.pub.connect("127.0.0.1", url_port)
        self.pub.loop_start()
        self.sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.sub.on_message = self._on_alert
        self.sub.connect("127.0.0.1", url_port)
        self.sub.subscribe(f"monitorme/{ward}/+/alerts", qos=1)
        self.sub.loop_start()

    def _on_alert(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        alert = orjson.loads(msg.payload)
        if alert["rule"] != "glucose_low" or alert["state"] != "raised" or alert.get("reminders"):
            return
        with self.lock:
            sent = self.sent.pop((alert["patient"], alert["ts"]), None)
            if sent is not None:
                self.latency_ms.append((now - sent) * 1000)
                self.detect_ms.append(alert["detected_at"] - sent * 1000)
                self.signal_ms.append(now * 1000 - alert["detected_at"])

    def run(self, seconds: float, stop: threading.Event) -> None:
        end = time.monotonic() + seconds
        cycle = 0
        while time.monotonic() < end and not stop.is_set():
            for i in range(LAT_PATIENTS):
                patient = f"lat{i:03d}"
                ts = int(time.time() * 1000)
                with self.lock:
                    self.sent[(patient, ts)] = time.time()
                self.pub.publish(f"monitorme/{self.ward}/{patient}/glucose",
                                 orjson.dumps({"ts": ts, "value": 65.0}), qos=1)
            time.sleep(1.0)
            for i in range(LAT_PATIENTS):
                ts = int(time.time() * 1000)
                self.pub.publish(f"monitorme/{self.ward}/lat{i:03d}/glucose",
                                 orjson.dumps({"ts": ts, "value": 110.0}), qos=1)
            time.sleep(1.0)
            cycle += 1

    def close(self) -> None:
        for c in (self.pub, self.sub):
            c.loop_stop()
            c.disconnect()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(patients: int, seconds: float) -> dict[str, Any]:
    ward = f"lat{secrets.token_hex(3)}"
    with MosquittoBroker() as broker, _admin_dsn() as admin:
        name = f"monitorme_bench_{secrets.token_hex(4)}"
        asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
        try:
            dsn = with_database(admin, name)
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
            env.update(MONITORME_MQTT_URL=broker.url, MONITORME_DATABASE_URL=dsn, MONITORME_WARD=ward,
                       MONITORME_HTTP=f"127.0.0.1:{port}", MONITORME_LOG_FORMAT="json")
            daemon = _Daemon(env, port)
            try:
                daemon.wait_event("mqtt_connected", 60)
                load = subprocess.Popen(
                    [sys.executable, "-m", "monitorme", "simulate", "--ward", ward, "--patients", str(patients),
                     "--speed", "1", "--duration", str(seconds + 25), "--url", broker.url],
                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )
                probe = Probe(broker.port, ward)
                stop = threading.Event()
                time.sleep(10)  # warm up: windows filled, every device reporting
                cpu0, wall0 = _cpu_s(daemon.ps), time.monotonic()
                before = daemon.metrics()
                probe.run(seconds, stop)
                cpu = _cpu_s(daemon.ps) - cpu0
                wall = time.monotonic() - wall0
                after = daemon.metrics()
                time.sleep(1.0)
                rss = daemon.peak_rss()
                probe.close()
                load.terminate()
                load_out, _ = load.communicate(timeout=30)
            finally:
                code = daemon.stop()
        finally:
            asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    lat = probe.latency_ms
    readings = after.get("monitorme_readings_total", 0) - before.get("monitorme_readings_total", 0)
    return {
        "patients": patients, "seconds": seconds, "ward_readings_per_s": round(readings / wall, 1),
        "alerts_timed": len(lat), "unmatched": len(probe.sent),
        "alert_latency_ms": {"p50": round(percentile(lat, 50), 2), "p99": round(percentile(lat, 99), 2),
                             "max": round(max(lat), 2)} if lat else None,
        "publish_to_detected_ms": {"p50": round(percentile(probe.detect_ms, 50), 2),
                                   "p99": round(percentile(probe.detect_ms, 99), 2)} if lat else None,
        "detected_to_received_ms": {"p50": round(percentile(probe.signal_ms, 50), 2),
                                    "p99": round(percentile(probe.signal_ms, 99), 2)} if lat else None,
        "daemon_cpu_share_of_one_core": round(cpu / wall, 3),
        "daemon_peak_rss_mb": round(rss / 2**20, 1),
        "daemon_exit_code": code,
        "load_generator": load_out.strip().splitlines()[-1:] if load_out else [],
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0], "cpu": psutil.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", default="bench/results/alert_latency.json")
    args = parser.parse_args(argv)
    report = run(args.patients, args.seconds)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    ok = report["alert_latency_ms"] is not None and report["daemon_exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

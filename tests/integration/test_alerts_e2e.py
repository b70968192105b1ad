"""Acceptance: every rule scenario through the real broker and the daemon; alerts out on MQTT and in
PostgreSQL; acknowledgement through the API comes back on MQTT; no-data alerts on the wall clock."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from monitorme.adapters.mqtt_source import parse_mqtt_url
from monitorme.sim.model import SimMessage
from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import ADMIN, CLINICIAN, base_url, get_json, make_settings, running
from tests.scenarios import all_scenarios

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio]


class AlertFeed:
    """A phone's push gateway, in short: a paho subscriber to the ward's alert topics."""

    def __init__(self, url: str, ward: str) -> None:
        self.alerts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        address = parse_mqtt_url(url)
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect(address.host, address.port)
        self.client.subscribe(f"monitorme/{ward}/+/alerts", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.alerts.append(orjson.loads(msg.payload))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.alerts)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def wait_until(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.2)
    return bool(check())


async def test_every_rule_end_to_end(tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    base = int(time.time() * 1000) - 10 * 3_600_000
    scenarios = {f"s{i:02d}": sc for i, sc in enumerate(all_scenarios())}
    messages: list[SimMessage] = []
    for patient, sc in scenarios.items():
        for m in sc.messages(ward, patient, base):
            messages.append(SimMessage(m.topic, m.payload, m.received_ms, patient, m.topic.rsplit("/", 1)[1]))
    messages.sort(key=lambda m: m.ts_ms)
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url), alarms_escalate_high_s=3)
    feed = AlertFeed(tuned_mqtt_url, ward)
    try:
        async with running(settings) as daemon, aiohttp.ClientSession() as http:
            url = base_url(daemon)
            for patient, sc in scenarios.items():
                if sc.thresholds:
                    async with http.put(f"{url}/api/patients/{patient}", json={"thresholds": sc.thresholds},
                                        headers=ADMIN) as r:
                        assert r.status == 200, await r.text()
            await asyncio.to_thread(publish, messages, tuned_mqtt_url, qos=1)

            def raised() -> dict[tuple[str, str], dict[str, Any]]:
                out: dict[tuple[str, str], dict[str, Any]] = {}
                for a in feed.snapshot():
                    if a["state"] == "raised":
                        out.setdefault((a["patient"], a["rule"]), a)
                return out

            wanted = {(p, rule) for p, sc in scenarios.items() for rule in sc.expect}
            assert await wait_until(lambda: wanted <= set(raised()), 60), wanted - set(raised())
            got = raised()
            for patient, sc in scenarios.items():
                for rule, (lo, hi) in sc.expect.items():
                    alert = got[(patient, rule)]
                    assert lo <= alert["ts"] - base <= hi, (sc.name, rule, alert["ts"] - base)
                    assert alert["ward"] == ward and alert["message"] and alert["kind"] and alert["priority"]
                for rule in sc.forbid:
                    assert (patient, rule) not in got, (sc.name, rule)
                for rule, n in sc.alerts_of.items():  # hysteresis: no flapping through the whole path
                    ids = {a["id"] for a in feed.snapshot() if a["patient"] == patient and a["rule"] == rule}
                    assert len(ids) == n, (sc.name, rule, len(ids))

            # unacknowledged high-priority alerts escalate on the wall clock (3 s here, 60 s by default)
            asystole = got[(next(p for p, sc in scenarios.items() if sc.name == "ecg_asystole"), "ecg_asystole")]
            assert await wait_until(lambda: any(
                a["id"] == asystole["id"] and a["state"] == "escalated" for a in feed.snapshot()), 15)

            # acknowledged through the API, the change goes out on MQTT too
            desat = got[(next(p for p, sc in scenarios.items() if sc.name == "spo2_desat"), "spo2_desat")]
            async with http.post(f"{url}/api/alerts/{desat['id']}/ack", headers=CLINICIAN) as r:
                assert r.status == 200
                assert (await r.json())["alert"]["state"] in ("acknowledged", "resolved")
            assert await wait_until(lambda: any(
                a["id"] == desat["id"] and a["acknowledged_by"] for a in feed.snapshot()), 10)

            # devices went quiet after the replay: no-data alerts come on the wall clock
            assert await wait_until(lambda: any(a["rule"] == "no_data_heart_rate" for a in feed.snapshot()), 20)

            # the score itself is visible beside the patient (the station feed shows it)
            status, body = await get_json(http, f"{url}/api/patients", CLINICIAN)
            by_patient = {p["patient"]: p for p in body["patients"]}  # type: ignore[index]
            high = by_patient[next(p for p, sc in scenarios.items() if sc.name == "news2_high")]["news2"]
            assert high["total"] >= 7 and high["band"] == "high" and high["partial"] is True
            normal = by_patient[next(p for p, sc in scenarios.items() if sc.name == "news2_normal")]["news2"]
            assert normal["total"] == 0 and normal["missing"] == []

            status, body = await get_json(http, f"{url}/api/alerts?state=open", CLINICIAN)
            assert status == 200 and body["alerts"]  # type: ignore[index]
            await asyncio.sleep(0.5)
    finally:
        feed.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        stored = {(r["patient_id"], r["rule"]) for r in await conn.fetch("SELECT patient_id, rule FROM alerts")}
        assert wanted <= stored
        events = await conn.fetchval("SELECT count(*) FROM alert_events")
        assert events >= len(wanted)
    finally:
        await conn.close()

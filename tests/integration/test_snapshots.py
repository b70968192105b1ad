"""Snapshots to a local HTTPS stand-in for MyMedicalData with its own CA that refuses the first attempts."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web

from monitorme.demo.services import free_port
from monitorme.sim.model import SimMessage
from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import CLINICIAN, STATION1, base_url, make_settings, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


class MyMedicalData:
    """An HTTPS FHIR endpoint that answers 503 to the first ``refuse`` POSTs, then 201."""

    def __init__(self, tmp: Path, refuse: int) -> None:
        self.ca = trustme.CA()
        self.ca_file = tmp / "mymedicaldata-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.refuse = refuse
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), orjson.loads(await request.read())))
        if len(self.requests) <= self.refuse:
            return web.Response(status=503, text="try later")
        return web.json_response({"resourceType": "Bundle", "type": "transaction-response"}, status=201)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/fhir", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost").configure_cert(context)
        await web.TCPSite(self.runner, "localhost", self.port, ssl_context=context).start()
        return f"https://localhost:{self.port}/fhir"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def msg(ward: str, vital: str, ts: int, value: object) -> SimMessage:
    return SimMessage(f"monitorme/{ward}/p1/{vital}", orjson.dumps({"ts": ts, "value": value}), ts, "p1", vital)


async def wait_state(http: aiohttp.ClientSession, url: str, snapshot_id: str, state: str,
                     timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(f"{url}/api/snapshots/{snapshot_id}", headers=CLINICIAN) as r:
            body: dict[str, Any] = await r.json()
        if body["state"] == state or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.2)


async def test_snapshot_is_retried_survives_a_restart_and_is_delivered_once_accepted(
        tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    records = MyMedicalData(tmp_path, refuse=3)
    endpoint = await records.start()
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url), mymedicaldata_url=endpoint,
                             mymedicaldata_token="mmd-secret", mymedicaldata_ca=str(records.ca_file))
    t0 = int(time.time() * 1000) - 120_000
    readings = [msg(ward, "heart_rate", t0 + i * 500, 70.0 + i % 5) for i in range(100)]
    readings += [msg(ward, "spo2", t0 + i * 5000, 97.0) for i in range(10)]
    readings += [msg(ward, "blood_pressure", t0, {"systolic": 121, "diastolic": 79, "mean": 93}),
                 msg(ward, "glucose", t0, 99.0), msg(ward, "temperature", t0, 37.1), msg(ward, "sleep", t0, "awake"),
                 msg(ward, "ecg", t0, {"hz": 250, "samples": [0.1, 1.2, -0.3, 0.0]})]
    try:
        async with running(settings) as daemon, aiohttp.ClientSession() as http:
            url = base_url(daemon)
            await asyncio.to_thread(publish, readings, tuned_mqtt_url)
            await asyncio.sleep(0.5)
            async with http.post(f"{url}/api/patients/p1/snapshots", json={"from": t0 - 1000}, headers=STATION1) as r:
                assert r.status == 403
            async with http.post(f"{url}/api/patients/p1/snapshots", json={"from": t0 - 1000},
                                 headers=CLINICIAN) as r:
                assert r.status == 201
                created = await r.json()
            assert created["state"] == "pending" and created["delivered"] is False
            first = await wait_state(http, url, created["id"], "never", timeout_s=2.5)
            assert first["attempts"] >= 1 and "503" in first["last_error"]
        # the daemon went away while MyMedicalData was refusing: the outbox is in PostgreSQL
        async with running(replace(settings)) as daemon, aiohttp.ClientSession() as http:
            done = await wait_state(http, base_url(daemon), created["id"], "delivered", timeout_s=30)
    finally:
        await records.stop()
    assert done["state"] == "delivered" and done["delivered"] is True and done["response_status"] == 201
    assert len(records.requests) == records.refuse + 1  # delivered once, after the refusals
    for headers, bundle in records.requests:
        assert headers["Idempotency-Key"] == created["id"]  # the same key on every attempt
        assert headers["Authorization"] == "Bearer mmd-secret"
        assert headers["Content-Type"] == "application/fhir+json"
        assert bundle == records.requests[0][1]  # retries send the identical Bundle
    bundle = records.requests[-1][1]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    resources = [e["resource"] for e in bundle["entry"]]
    assert all(e["request"] == {"method": "POST", "url": "Observation"} for e in bundle["entry"])
    codes = {c["code"] for r in resources for c in r["code"]["coding"]}
    assert {"8867-4", "2708-6", "59408-5", "85354-9", "2339-0", "8310-5", "131328", "248218005"} <= codes
    bp = next(r for r in resources if r["code"]["coding"][0]["code"] == "85354-9")
    assert {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in bp["component"]} == {
        "8480-6": 121, "8462-4": 79, "8478-0": 93}
    glucose = [r for r in resources if r["code"]["coding"][0]["code"] == "2339-0"]
    assert glucose[0]["category"][0]["coding"][0]["code"] == "laboratory"
    assert glucose[0]["valueQuantity"] == {"value": 99.0, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                           "code": "mg/dL"}
    ecg = next(r for r in resources if "valueSampledData" in r)
    assert ecg["valueSampledData"]["period"] == 4.0 and ecg["valueSampledData"]["data"].startswith("0.100 1.200")
    hr_summary = next(r for r in resources if r["code"]["coding"][0]["code"] == "8867-4" and "effectivePeriod" in r)
    assert hr_summary["valueQuantity"]["value"] == 72.0 and "100 readings" in hr_summary["note"][0]["text"]

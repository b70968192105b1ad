"""Station websockets through the real daemon: hello, coalesced vitals, alerts at once, acks, scoping."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import ADMIN, base_url, make_settings, running
from tests.integration.daemon_harness import reading as msg

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]



async def frames_until(ws: aiohttp.ClientWebSocketResponse, done: Any, timeout_s: float = 10) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; got {[f['type'] for f in got]}"
        msg = await ws.receive(timeout=remaining)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        got.append(orjson.loads(msg.data))
    return got


async def test_station_screen_feed(tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    t0 = int(time.time() * 1000) - 60_000
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        for patient, station in (("p1", "s1"), ("p2", "s2")):
            async with http.put(f"{url}/api/patients/{patient}", json={"station": station}, headers=ADMIN) as r:
                assert r.status == 200
        await asyncio.to_thread(publish, [msg(ward, "p1", "heart_rate", t0, 72.0)], tuned_mqtt_url)
        await asyncio.sleep(0.3)

        # the screen itself: static, no CDN, behind the station's token
        async with http.get(f"{url}/stations/s1?token=s1-token-0001") as r:
            page = await r.text()
            assert r.status == 200 and "/static/station.js" in page and "http" not in page.split("<body>")[1]
        async with http.get(f"{url}/stations/s1?token=s2-token-0001") as r:
            assert r.status == 403
        async with http.get(f"{url}/static/station.js") as r:
            assert r.status == 200 and "WebSocket" in await r.text()

        ws_url = url.replace("http", "ws") + "/ws/stations/s1"
        async with http.get(ws_url) as r:
            assert r.status == 401
        async with http.get(ws_url + "?token=s2-token-0001") as r:
            assert r.status == 403
        screen = await http.ws_connect(ws_url + "?token=s1-token-0001")
        clinician = await http.ws_connect(ws_url + "?token=clinician-token-1")
        (hello,) = await frames_until(screen, lambda g: len(g) >= 1)
        assert hello["type"] == "hello" and hello["station"] == "s1"
        assert [p["patient"] for p in hello["patients"]] == ["p1"]
        assert hello["patients"][0]["latest"]["heart_rate"] == {"ts": t0, "value": 72.0}
        await frames_until(clinician, lambda g: len(g) >= 1)

        # 200 heart rates in a burst arrive coalesced; p2 (another station) never shows up
        burst = [msg(ward, "p1", "heart_rate", t0 + 500 * (i + 1), 60.0 + i % 30) for i in range(200)]
        burst += [msg(ward, "p2", "heart_rate", t0 + 500 * (i + 1), 70.0) for i in range(50)]
        await asyncio.to_thread(publish, burst, tuned_mqtt_url)
        last_ts = t0 + 500 * 200
        got = await frames_until(screen, lambda g: any(
            r["ts"] == last_ts for f in g if f["type"] == "vitals" for r in f["readings"]))
        vitals = [f for f in got if f["type"] == "vitals"]
        assert len(vitals) < 200  # coalesced, at most one frame per 50 ms
        assert all(r["patient"] == "p1" for f in vitals for r in f["readings"])

        # a desaturation: the alert frame comes at once; an ack from the screen reaches every watcher
        await asyncio.to_thread(publish, [msg(ward, "p1", "spo2", t0 + 200_000, 75.0)], tuned_mqtt_url)
        got = await frames_until(screen, lambda g: any(f["type"] == "alert" for f in g))
        alert = next(f["alert"] for f in got if f["type"] == "alert")
        assert (alert["rule"], alert["state"], alert["patient"]) == ("spo2_desat", "raised", "p1")
        await screen.send_str(orjson.dumps({"type": "ack", "alert": alert["id"]}).decode())

        def acked(g: list[dict[str, Any]]) -> bool:
            return any(f["type"] == "alert" and f["alert"]["id"] == alert["id"]
                       and f["alert"]["state"] == "acknowledged" for f in g)

        await frames_until(clinician, acked)
        await frames_until(screen, acked)
        await screen.close()
        await clinician.close()


async def test_audit_and_discharge(tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    import asyncpg

    from tests.integration.daemon_harness import CLINICIAN, get_json

    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    t0 = int(time.time() * 1000) - 60_000
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        async with http.put(f"{url}/api/patients/p1", json={"station": "s1", "bed": "b2"}, headers=ADMIN) as r:
            assert r.status == 200
        await asyncio.to_thread(publish, [msg(ward, "p1", "spo2", t0, 75.0)], tuned_mqtt_url)
        alert: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while not alert:
            assert time.monotonic() < deadline
            status, body = await get_json(http, f"{url}/api/alerts?patient=p1&state=open", CLINICIAN)
            alert = next(iter(body["alerts"]), {})  # type: ignore[index]
            await asyncio.sleep(0.1)
        async with http.post(f"{url}/api/alerts/{alert['id']}/ack", headers=CLINICIAN) as r:
            assert r.status == 200
        async with http.delete(f"{url}/api/patients/p1", headers=CLINICIAN) as r:
            assert r.status == 403
        async with http.delete(f"{url}/api/patients/p1", headers=ADMIN) as r:
            assert r.status == 200
        status, body = await get_json(http, f"{url}/api/patients", CLINICIAN)
        assert status == 200 and body["patients"] == []  # type: ignore[index]
        assert daemon.open_alerts("p1") == []
        await asyncio.sleep(0.3)  # the audit rows go with the writer's next batch
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT actor, role, action, patient_id, alert_id::text AS alert FROM audit ORDER BY id")
        assert [(r["role"], r["action"], r["patient_id"]) for r in rows] == [
            ("admin", "put_patient", "p1"), ("clinician", "acknowledge", "p1"), ("admin", "discharge", "p1")]
        assert rows[1]["alert"] == alert["id"]
        text = " ".join(str(dict(r)) for r in rows)
        assert "token" not in text  # names, never secrets
        states = [r["state"] for r in await conn.fetch(
            "SELECT state FROM alert_events WHERE alert_id = $1::uuid ORDER BY id", alert["id"])]
        assert states[-1] == "resolved"
    finally:
        await conn.close()

"""History API over real HTTP: reply shape, filters, downsampling that keeps peaks, roles and scopes."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from monitorme.config import data_dir
from monitorme.sim.model import SimMessage
from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import (
    ADMIN,
    CLINICIAN,
    STATION1,
    base_url,
    get_json,
    make_settings,
    running,
    wait_for_count,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def msg(ward: str, patient: str, vital: str, doc: dict[str, object]) -> SimMessage:
    return SimMessage(f"monitorme/{ward}/{patient}/{vital}", orjson.dumps(doc), int(doc["ts"]), patient, vital)  # type: ignore[call-overload]


async def test_history_filters_downsamples_and_scopes(tmp_path: Path, ward: str, mqtt_url: str, pg_dsn: str) -> None:
    t0 = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
    hr = [70.0 + (i % 7) for i in range(600)]
    hr[123], hr[456] = 180.0, 31.0  # peaks that downsampling must keep
    messages = [msg(ward, "p1", "heart_rate", {"ts": t0 + 500 * i, "value": v, "seq": i, "device": "m1"})
                for i, v in enumerate(hr)]
    messages += [
        msg(ward, "p1", "blood_pressure", {"ts": t0, "value": {"systolic": 131, "diastolic": 82, "mean": 98}}),
        msg(ward, "p1", "ecg", {"ts": t0, "value": {"hz": 250, "samples": [0.1, 1.2, -0.25, 0.0]}}),
        msg(ward, "p1", "sleep", {"ts": t0, "value": "asleep"}),
        msg(ward, "p1", "temperature", {"ts": t0, "value": 98.6, "unit": "F"}),
        msg(ward, "p2", "spo2", {"ts": t0, "value": 97}),
    ]
    settings = make_settings(tmp_path, ward=ward, mqtt_url=mqtt_url, dsn=pg_dsn, protocol=broker_protocol(mqtt_url))
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        await asyncio.to_thread(publish, messages, mqtt_url, qos=1)
        assert await wait_for_count(pg_dsn, "SELECT count(*) FROM readings", len(messages), 30) == len(messages)
        url = base_url(daemon)

        status, body = await get_json(http, f"{url}/api/patients/p1/history?vital=heart_rate", CLINICIAN)
        assert status == 200
        assert body["patient"] == "p1" and body["vital"] == "heart_rate"  # type: ignore[index]
        readings = body["readings"]  # type: ignore[index]
        assert [r["ts"] for r in readings] == [t0 + 500 * i for i in range(600)]
        assert [r["value"] for r in readings] == hr

        window = f"from={t0 + 500 * 100}&to={t0 + 500 * 199}"
        status, body = await get_json(http, f"{url}/api/patients/p1/history?vital=heart_rate&{window}", CLINICIAN)
        assert [r["value"] for r in body["readings"]] == hr[100:200]  # type: ignore[index]

        iso_from = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((t0 + 500 * 590) / 1000)) + "+00:00"
        query = f"vital=heart_rate&from={iso_from.replace('+', '%2B')}"
        status, body = await get_json(http, f"{url}/api/patients/p1/history?{query}", CLINICIAN)
        assert len(body["readings"]) == 10  # type: ignore[index]

        status, body = await get_json(http, f"{url}/api/patients/p1/history?vital=heart_rate&max_points=40", CLINICIAN)
        values = [r["value"] for r in body["readings"]]  # type: ignore[index]
        assert len(values) <= 40 and 180.0 in values and 31.0 in values
        assert [r["ts"] for r in body["readings"]] == sorted(r["ts"] for r in body["readings"])  # type: ignore[index]

        status, body = await get_json(http, f"{url}/api/patients/p1/history", CLINICIAN)
        vitals = body["vitals"]  # type: ignore[index]
        assert set(vitals) == {"heart_rate", "blood_pressure", "ecg", "sleep", "temperature"}
        assert vitals["blood_pressure"] == [{"ts": t0, "value": {"systolic": 131, "diastolic": 82, "mean": 98}}]
        assert vitals["ecg"] == [{"ts": t0, "value": {"hz": 250, "samples": [0.1, 1.2, -0.25, 0.0]}}]
        assert vitals["sleep"] == [{"ts": t0, "value": "asleep"}]
        assert vitals["temperature"][0]["value"] == pytest.approx(37.0)

        # roles and scopes: no token 401, unassigned patient hidden from stations, admin assigns
        assert (await get_json(http, f"{url}/api/patients/p1/history", {}))[0] == 401
        assert (await get_json(http, f"{url}/api/patients/p1/history", {"Authorization": "Bearer nope"}))[0] == 401
        assert (await get_json(http, f"{url}/api/patients/p1/history", STATION1))[0] == 403
        async with http.put(f"{url}/api/patients/p1", json={"station": "s1", "bed": "b4"}, headers=CLINICIAN) as r:
            assert r.status == 403
        async with http.put(f"{url}/api/patients/p1", json={"station": "s1", "bed": "b4"}, headers=ADMIN) as r:
            assert r.status == 200 and (await r.json())["station"] == "s1"
        assert (await get_json(http, f"{url}/api/patients/p1/history?vital=spo2", STATION1))[0] == 200
        # per-patient thresholds are checked against the rules before anything is stored
        for bad in ({"no_such_rule": {}}, {"spo2_low": {"threshold": "low"}}, {"spo2_low": {"speed": 1}},
                    {"news2": {"spo2_scale": 3}}):
            async with http.put(f"{url}/api/patients/p1", json={"thresholds": bad}, headers=ADMIN) as r:
                assert r.status == 400 and (await r.json())["error"] == "bad_thresholds", bad
        good = {"spo2_low": {"threshold": 88, "asleep": {"threshold": 85}}, "news2": {"on_oxygen": True}}
        async with http.put(f"{url}/api/patients/p1", json={"thresholds": good}, headers=ADMIN) as r:
            assert r.status == 200 and (await r.json())["thresholds"] == good
        status, body = await get_json(http, f"{url}/api/patients", STATION1)
        assert [p["patient"] for p in body["patients"]] == ["p1"]  # type: ignore[index]
        status, body = await get_json(http, f"{url}/api/patients", CLINICIAN)
        assert [p["patient"] for p in body["patients"]] == ["p1", "p2"]  # type: ignore[index]

        # bad requests get a reason, not a 500
        for query in ("vital=blood_ketones", "from=yesterday", "max_points=1", f"from={t0 + 10}&to={t0}"):
            assert (await get_json(http, f"{url}/api/patients/p1/history?{query}", CLINICIAN))[0] == 400
        assert (await get_json(http, f"{url}/api/patients/nobody/history", CLINICIAN))[0] == 404
        status, body = await get_json(http, f"{url}/readyz", {})
        assert status == 200 and body == {"ready": True, "broker": True, "database": True}
        async with http.get(f"{url}/metrics") as r:
            text = await r.text()
        assert 'monitorme_readings_total{vital="heart_rate"} 600' in text


async def test_a_ninth_vital_is_stored_and_served_with_no_engine_change(
    tmp_path: Path, ward: str, mqtt_url: str, pg_dsn: str
) -> None:
    pipelines = tmp_path / "pipelines"
    shutil.copytree(data_dir("pipelines"), pipelines)
    (pipelines / "etco2.toml").write_text(
        'vital = "etco2"\ntitle = "EtCO2"\nvalue = "number"\nunit = "mm[Hg]"\nperiod_s = 1\nrange = [0, 150]\n'
    )
    t0 = int(time.time() * 1000) - 60_000
    messages = [msg(ward, "p1", "etco2", {"ts": t0 + 1000 * i, "value": 35 + i}) for i in range(5)]
    messages.append(msg(ward, "p1", "etco2", {"ts": t0, "value": 400}))
    settings = make_settings(tmp_path, ward=ward, mqtt_url=mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(mqtt_url), pipelines_dir=str(pipelines))
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        await asyncio.to_thread(publish, messages, mqtt_url, qos=1)
        assert await wait_for_count(pg_dsn, "SELECT count(*) FROM readings", 5, 20) == 5
        assert await wait_for_count(pg_dsn, "SELECT count(*) FROM dead_letters", 1, 20) == 1
        status, body = await get_json(http, f"{base_url(daemon)}/api/patients/p1/history?vital=etco2", CLINICIAN)
    assert status == 200
    assert [r["value"] for r in body["readings"]] == [35, 36, 37, 38, 39]  # type: ignore[index]

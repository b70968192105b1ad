"""Clicks in a real headless Chromium (Playwright driving Debian's chromium) against the running daemon."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.browser import needs_chromium, open_page
from tests.integration.daemon_harness import ADMIN, CLINICIAN, base_url, make_settings, running
from tests.integration.daemon_harness import reading as msg
from tests.integration.test_snapshots import MyMedicalData

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, needs_chromium]



async def test_station_page_alert_within_a_second_and_acknowledged_by_a_click(
        tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    now = int(time.time() * 1000)
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        for patient, station in (("pin", "s1"), ("pin2", "s1"), ("pout", "s2")):
            async with http.put(f"{url}/api/patients/{patient}", json={"station": station}, headers=ADMIN) as r:
                assert r.status == 200
        await asyncio.to_thread(publish, [msg(ward, p, "heart_rate", now - 2000, 70.0) for p in ("pin", "pin2", "pout")]
                                + [msg(ward, "pin", "spo2", now - 2000, 97.0)], tuned_mqtt_url)
        async with open_page(f"{url}/stations/s1?token=s1-token-0001") as page:
            await page.wait_for_selector("#connection.ok")
            tiles = await page.eval_on_selector_all("#tiles article",
                                                    "els => els.map(e => e.getAttribute('aria-label'))")
            assert sorted(tiles) == ["Patient pin", "Patient pin2"]  # exactly its patients

            # live: a new value shows up, then a breaching reading becomes an alert on screen within 1 s
            await asyncio.to_thread(publish, [msg(ward, "pin", "heart_rate", now, 123.0)], tuned_mqtt_url)
            await page.wait_for_selector("#tiles .value:text('123')", timeout=2000)
            published = time.monotonic()
            await asyncio.to_thread(publish, [msg(ward, "pin", "spo2", now, 76.0)], tuned_mqtt_url)
            await page.wait_for_selector("#tiles li.high:has-text('SpO2 76%')", timeout=3000)
            assert time.monotonic() - published <= 1.0
            if os.environ.get("STATION_SCREENSHOT"):
                await page.screenshot(path=os.environ["STATION_SCREENSHOT"])
            await page.click("#tiles li.high button:has-text('Acknowledge')")
            await page.wait_for_selector("#tiles li.high.acknowledged", timeout=3000)
        (alert,) = [a for a in daemon.open_alerts("pin") if a.rule == "spo2_desat"]
        assert alert.state.value == "acknowledged" and alert.acknowledged_by == "station:s1#3"


async def test_history_page_one_vital_ten_minutes_matches_the_api_and_uploads_a_snapshot(
        tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    records = MyMedicalData(tmp_path, refuse=0)
    endpoint = await records.start()
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url), mymedicaldata_url=endpoint,
                             mymedicaldata_token="mmd-secret", mymedicaldata_ca=str(records.ca_file))
    now = int(time.time() * 1000)
    readings = [msg(ward, "p7", "heart_rate", now - 1_800_000 + i * 1000, 60.0 + (i * 7) % 41) for i in range(1800)]
    readings += [msg(ward, "p7", "spo2", now - 1_800_000 + i * 5000, 96.0) for i in range(360)]
    try:
        async with running(settings) as daemon, aiohttp.ClientSession() as http:
            url = base_url(daemon)
            await asyncio.to_thread(publish, readings, tuned_mqtt_url)
            await asyncio.sleep(1.0)
            async with open_page(f"{url}/patients/p7?token=clinician-token-1", width=1200) as page:
                await page.wait_for_selector("canvas[data-vital='heart_rate']")
                for vital in ("spo2", "respiration"):  # filter to one vital
                    await page.uncheck(f"#vitals input[value='{vital}']")
                await page.select_option("#range", "600000")  # the last 10 minutes
                await page.wait_for_function(
                    "() => { const c = document.querySelectorAll('#charts canvas');"
                    " return c.length === 1 && c[0].dataset.vital === 'heart_rate'"
                    " && +c[0].dataset.to - +c[0].dataset.from === 600000; }")
                data = await page.eval_on_selector("#charts canvas", "c => ({...c.dataset})")
                query = f"vital=heart_rate&from={data['from']}&to={data['to']}&max_points={data['maxPoints']}"
                async with http.get(f"{url}/api/patients/p7/history?{query}", headers=CLINICIAN) as r:
                    api_points = len((await r.json())["readings"])
                assert int(data["points"]) == api_points > 0  # the chart shows what the history API gives
                await page.click("#snapshot")
                await page.wait_for_selector("#snapshot-state:has-text('delivered')", timeout=15000)
    finally:
        await records.stop()
    (request,) = records.requests
    codes = {c["code"] for e in request[1]["entry"] for c in e["resource"]["code"]["coding"]}
    assert codes == {"8867-4"}  # only the vital that was shown

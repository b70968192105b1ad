"""The station page in a real headless Chromium against the real daemon: tiles, values, alerts, live."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.browser import needs_chromium, open_page
from tests.integration.daemon_harness import ADMIN, base_url, make_settings, running
from tests.integration.daemon_harness import reading as msg

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, needs_chromium]



async def test_station_page_shows_patients_values_and_alerts(tmp_path: Path, ward: str, tuned_mqtt_url: str,
                                                              pg_dsn: str) -> None:
    import aiohttp

    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    now = int(time.time() * 1000)
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        for patient, station in (("p1", "s1"), ("p2", "s1"), ("p9", "s2")):
            async with http.put(f"{url}/api/patients/{patient}", json={"station": station}, headers=ADMIN) as r:
                assert r.status == 200
        readings = [msg(ward, "p1", "heart_rate", now - 5000 + i * 500, 71.0 + i % 3) for i in range(8)]
        readings += [msg(ward, "p1", "blood_pressure", now - 4000, {"systolic": 118, "diastolic": 76}),
                     msg(ward, "p2", "spo2", now - 3000, 75.0), msg(ward, "p9", "heart_rate", now - 3000, 99.0)]
        await asyncio.to_thread(publish, readings, tuned_mqtt_url)
        await asyncio.sleep(0.5)
        async with open_page(f"{url}/stations/s1?token=s1-token-0001") as page:
            await page.wait_for_selector("#tiles li.high", timeout=10_000)
            dom = await page.content()
    assert "station s1" in dom
    assert 'class="conn ok"' in dom and ">live<" in dom
    assert "Patient p1" in dom and "Patient p2" in dom and "p9" not in dom  # only this station's patients
    assert ">118/76<" in dom  # blood pressure as the screen shows it
    assert "*** SpO2 75%" in dom and "prio-high" in dom  # the high-priority alert, IEC prefix and colour
    assert "Acknowledge" in dom


async def test_phone_view_lists_the_wards_open_alerts(tmp_path: Path, ward: str, tuned_mqtt_url: str,
                                                      pg_dsn: str) -> None:
    import aiohttp

    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    now = int(time.time() * 1000)
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        async with http.get(f"{url}/alerts?token=s1-token-0001") as r:
            assert r.status == 403  # a station screen does not get the ward's feed
        await asyncio.to_thread(publish, [msg(ward, "p3", "spo2", now - 2000, 76.0),
                                          msg(ward, "p4", "glucose", now - 2000, 60.0)], tuned_mqtt_url)
        await asyncio.sleep(0.5)
        async with open_page(f"{url}/alerts?token=clinician-token-1") as page:
            await page.wait_for_selector("#alerts li >> nth=1", timeout=10_000)
            dom = await page.content()
    assert ">live<" in dom
    assert "*** p3" in dom and "** p4" in dom  # unassigned patients too: clinicians see the whole ward
    assert dom.index("*** p3") < dom.index("** p4")  # highest priority first
    assert "/patients/p3?token=" in dom


async def test_history_page_charts_the_range_and_lists_alerts(tmp_path: Path, ward: str, tuned_mqtt_url: str,
                                                              pg_dsn: str) -> None:
    import aiohttp

    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    now = int(time.time() * 1000)
    readings = [msg(ward, "p5", "heart_rate", now - 3_000_000 + i * 2000, 70.0 + i % 9) for i in range(1400)]
    readings += [msg(ward, "p5", "spo2", now - 60_000, 75.0)]
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        await asyncio.to_thread(publish, readings, tuned_mqtt_url)
        await asyncio.sleep(0.5)
        async with http.get(f"{url}/patients/p5?token=s1-token-0001") as r:
            assert r.status == 403  # unassigned: not this station's patient
        async with open_page(f"{url}/patients/p5?token=clinician-token-1", width=1200) as page:
            await page.wait_for_selector("canvas[data-vital='heart_rate'][data-points]", timeout=10_000)
            await page.wait_for_function("() => document.body.textContent.includes('SpO2 75% at or below 80%')",
                                         timeout=10_000)
            dom = await page.content()
    assert "History · <span id=\"patient\">p5</span>" in dom
    import re

    points = int(re.search(r'aria-label="Heart rate: (\d+) points"', dom).group(1))  # type: ignore[union-attr]
    assert 100 <= points < 1400  # downsampled through the history API, not all 1,400 readings
    assert "SpO2 75% at or below 80%" in dom  # the alert, on the time line and in the list

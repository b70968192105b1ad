"""Logs at INFO and above carry no vital values, payloads, tokens or passwords.

The daemon (in process, logging captured) gets readings with distinctive values, malformed
payloads with a canary string, a database URL and a broker URL with passwords, and failed and
successful logins; no log record (message or extra fields) may contain any of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from monitorme.sim.model import SimMessage
from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import ADMIN, base_url, make_settings, running
from tests.integration.daemon_harness import reading as msg

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
CANARIES = ("187.654", "43.21", "CANARY-PAYLOAD", "admin-token-1", "wrong-token-CANARY")


async def test_no_values_payloads_or_secrets_in_logs(tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    now = int(time.time() * 1000)
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        bad = [SimMessage(f"monitorme/{ward}/p1/heart_rate", b'{"ts": 1, "value": "CANARY-PAYLOAD"}', now, "p1",
                          "heart_rate"),
               SimMessage(f"monitorme/{ward}/p1/spo2", b"CANARY-PAYLOAD not json", now, "p1", "spo2")]
        good = [msg(ward, "p1", "heart_rate", now - 1000, 187.654), msg(ward, "p1", "temperature", now - 1000, 43.21)]
        await asyncio.to_thread(publish, good + bad, tuned_mqtt_url)
        async with http.get(f"{url}/api/patients", headers={"Authorization": "Bearer wrong-token-CANARY"}) as r:
            assert r.status == 401
        async with http.get(f"{url}/api/patients", headers=ADMIN) as r:
            assert r.status == 200
        for _ in range(50):
            if daemon.metrics.total("monitorme_rejected_total") >= 2 and daemon.metrics.total(
                    "monitorme_stored_total") >= 2:
                break
            await asyncio.sleep(0.1)
        assert daemon.metrics.total("monitorme_stored_total") >= 2  # the values went all the way through
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any(r.getMessage() == "reading_rejected" for r in records)  # rejections are logged...
    for record in records:
        text = record.getMessage() + " " + orjson.dumps(
            {k: v for k, v in record.__dict__.items() if k not in ("args", "exc_info", "msg")}, default=str).decode()
        for canary in CANARIES:
            assert canary not in text, f"{canary!r} in the log: {text[:300]}"  # ...without their contents

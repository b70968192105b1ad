"""Access control, as CONTRACT.md §1/§5 says: every route × role × in/out of scope × missing/wrong token.

Station tokens see only their station's patients (403 otherwise); clinicians see the whole ward and
upload snapshots; admins also admit, move, discharge and change thresholds; no or unknown token: 401.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from monitorme.sim.model import SimMessage
from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import ADMIN, base_url, make_settings, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TOKENS = {"none": None, "wrong": "not-a-token-at-all", "station": "s1-token-0001",
          "clinician": "clinician-token-1", "admin": "admin-token-1"}
U, F = 401, 403  # unauthenticated, forbidden


def expect(station: int, clinician: int, admin: int) -> dict[str, int]:
    return {"none": U, "wrong": U, "station": station, "clinician": clinician, "admin": admin}


async def test_access_matrix(tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url),
                             mymedicaldata_url="https://127.0.0.1:9/fhir",
                             http_auth_failures_per_minute=10_000)  # the matrix fails on purpose, often
    now = int(time.time() * 1000)
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        for patient, station in (("pin", "s1"), ("pout", "s2"), ("pdel", "s1")):
            async with http.put(f"{url}/api/patients/{patient}", json={"station": station}, headers=ADMIN) as r:
                assert r.status == 200
        msgs = [SimMessage(f"monitorme/{ward}/{p}/spo2", orjson.dumps({"ts": now - 1000, "value": 75.0}), now, p,
                           "spo2") for p in ("pin", "pout")]
        await asyncio.to_thread(publish, msgs, tuned_mqtt_url)
        await asyncio.sleep(0.5)
        alert = {a.patient: a.id for a in daemon.open_alerts()}
        async with http.post(f"{url}/api/patients/pin/snapshots", json={}, headers=ADMIN) as r:
            snap_in = (await r.json())["id"]
        async with http.post(f"{url}/api/patients/pout/snapshots", json={}, headers=ADMIN) as r:
            snap_out = (await r.json())["id"]

        cases: list[tuple[str, str, Any, dict[str, int]]] = [
            ("GET", "/api/patients", None, expect(200, 200, 200)),
            ("GET", "/api/patients/pin/history?vital=spo2", None, expect(200, 200, 200)),
            ("GET", "/api/patients/pout/history?vital=spo2", None, expect(F, 200, 200)),
            ("PUT", "/api/patients/pin", {"bed": "b1"}, expect(F, F, 200)),
            ("PUT", "/api/patients/pout", {"bed": "b2"}, expect(F, F, 200)),
            ("GET", "/api/alerts", None, expect(200, 200, 200)),
            ("GET", "/api/alerts?patient=pin", None, expect(200, 200, 200)),
            ("GET", "/api/alerts?patient=pout", None, expect(F, 200, 200)),
            ("POST", f"/api/alerts/{alert['pin']}/ack", None, expect(200, 200, 200)),
            ("POST", f"/api/alerts/{alert['pout']}/ack", None, expect(F, 200, 200)),
            ("POST", "/api/patients/pin/snapshots", {}, expect(F, 201, 201)),
            ("POST", "/api/patients/pout/snapshots", {}, expect(F, 201, 201)),
            ("GET", f"/api/snapshots/{snap_in}", None, expect(200, 200, 200)),
            ("GET", f"/api/snapshots/{snap_out}", None, expect(F, 200, 200)),
            ("GET", "/stations/s1", None, expect(200, 200, 200)),
            ("GET", "/stations/s2", None, expect(F, 200, 200)),
            ("GET", "/alerts", None, expect(F, 200, 200)),
            ("GET", "/patients/pin", None, expect(200, 200, 200)),
            ("GET", "/patients/pout", None, expect(F, 200, 200)),
            ("GET", "/ws/stations/s1", None, expect(101, 101, 101)),
            ("GET", "/ws/stations/s2", None, expect(F, 101, 101)),
            ("GET", "/ws/alerts", None, expect(F, 101, 101)),
            ("DELETE", "/api/patients/pdel", None, expect(F, F, 200)),  # admin last: it discharges
        ]
        failures = []
        for method, path, body, by_role in cases:
            for role, want in by_role.items():
                headers = {} if TOKENS[role] is None else {"Authorization": f"Bearer {TOKENS[role]}"}
                if path.startswith("/ws/"):
                    try:
                        sep = "&" if "?" in path else "?"
                        token = f"{sep}token={TOKENS[role]}" if TOKENS[role] else ""
                        ws = await http.ws_connect(f"{url}{path}{token}")
                        got = 101
                        await ws.close()
                    except aiohttp.WSServerHandshakeError as exc:
                        got = exc.status
                else:
                    async with http.request(method, f"{url}{path}", json=body, headers=headers) as r:
                        got = r.status
                if got != want:
                    failures.append(f"{method} {path} as {role}: {got}, expected {want}")
        for public in ("/healthz", "/readyz", "/servingz", "/metrics", "/api/openapi.json"):
            async with http.get(f"{url}{public}") as r:
                if r.status != 200:
                    failures.append(f"GET {public} without a token: {r.status}")
    assert failures == []


async def test_failed_logins_are_rate_limited_per_address(tmp_path: Path, ward: str, tuned_mqtt_url: str,
                                                          pg_dsn: str) -> None:
    import aiohttp

    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url), http_auth_failures_per_minute=5)
    async with running(settings) as daemon, aiohttp.ClientSession() as http:
        url = base_url(daemon)
        statuses = []
        for i in range(7):
            async with http.get(f"{url}/api/patients", headers={"Authorization": f"Bearer guess-{i}"}) as r:
                statuses.append(r.status)
        async with http.get(f"{url}/api/patients", headers=ADMIN) as r:
            limited_even_with_a_good_token = r.status
            retry_after = r.headers.get("Retry-After")
        async with http.get(f"{url}/healthz") as r:
            health = r.status
        failures = daemon.metrics.get("monitorme_http_auth_failures_total")
        limited = daemon.metrics.get("monitorme_http_auth_limited_total")
    assert statuses == [401] * 5 + [429] * 2
    assert limited_even_with_a_good_token == 429 and retry_after is not None and int(retry_after) >= 1
    assert health == 200  # health checks are never limited
    assert failures == 5 and limited == 3

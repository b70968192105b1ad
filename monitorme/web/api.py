"""REST handlers: patients, history, health, readiness and metrics (CONTRACT.md §5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from monitorme.adapters.pg_reader import PgReader, TooManyReadings
from monitorme.core.alerts import Alert
from monitorme.core.decode import ID_PATTERN
from monitorme.errors import ConfigError
from monitorme.metrics import Metrics
from monitorme.web.auth import Principal, Role
from monitorme.web.hub import WARD


class Control(Protocol):
    """What the web layer may ask of the running engine (implemented by the runtime)."""

    def acknowledge(self, alert_id: str, by: str) -> Alert | None: ...
    def open_alerts(self, patient: str | None = None) -> list[Alert]: ...
    def patient_station(self, patient: str) -> str | None: ...
    def patient_status(self, patient: str) -> dict[str, Any] | None: ...
    def station_hello(self, station: str) -> dict[str, Any]: ...
    def audit(self, who: Principal, action: str, patient: str | None = None, alert_id: str | None = None,
              detail: dict[str, Any] | None = None) -> None: ...
    def discharged(self, patient: str) -> None: ...
    def snapshots_enabled(self) -> bool: ...
    def snapshot_queued(self) -> None: ...
    async def serve_station(self, request: web.Request, station: str, who: Principal) -> web.StreamResponse: ...
    def validate_thresholds(self, raw: dict[str, object]) -> dict[str, dict[str, object]]: ...
    def patient_changed(self, patient: str, station: str | None, thresholds: dict[str, object]) -> None: ...


READER = web.AppKey("reader", PgReader)
CONTROL: web.AppKey[Control] = web.AppKey("control")
METRICS = web.AppKey("metrics", Metrics)
Readiness = Callable[[], dict[str, bool]]
READY: web.AppKey[Readiness] = web.AppKey("ready")
PRINCIPAL = web.RequestKey("principal", Principal)  # set by the auth middleware
_DAY_MS = 86_400_000


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status, content_type="application/json",
    )


def error(status: int, reason: str, detail: str) -> web.HTTPException:
    """An HTTP error with a JSON body ``{"error": reason, "detail": ...}``."""
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
           404: web.HTTPNotFound, 503: web.HTTPServiceUnavailable}[status]
    return cls(text=orjson.dumps({"error": reason, "detail": detail}).decode(), content_type="application/json")


def parse_time(text: str, name: str) -> int:
    """Epoch ms, or an RFC 3339 string with offset, from a query parameter."""
    if text.isdigit() and len(text) <= 15:  # epoch ms, 1970 until year 33658
        return int(text)
    if text.lstrip("-").isdigit():
        raise error(400, "bad_time", f"{name} must be epoch ms from 0 to 10^15, got {text[:40]!r}")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise error(400, "bad_time", f"{name} must be epoch ms or RFC 3339, got {text[:40]!r}") from None
    if parsed.tzinfo is None:
        raise error(400, "bad_time", f"{name} needs a UTC offset")
    return round(parsed.timestamp() * 1000)


def time_range(raw: Any) -> tuple[int, int]:
    """``from``/``to`` of a query or body (epoch ms or RFC 3339); default the last 24 h."""
    to_ms = parse_time(str(raw["to"]), "to") if "to" in raw else int(time.time() * 1000)
    from_ms = parse_time(str(raw["from"]), "from") if "from" in raw else to_ms - _DAY_MS
    if from_ms > to_ms:
        raise error(400, "bad_time", "from is after to")
    return from_ms, to_ms


async def json_object(request: web.Request, empty_ok: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why not."""
    raw = await request.read()
    try:
        body = orjson.loads(raw or (b"{}" if empty_ok else raw))
    except orjson.JSONDecodeError:
        raise error(400, "not_json", "body must be a JSON object") from None
    if not isinstance(body, dict):
        raise error(400, "bad_body", "body must be a JSON object")
    return body


def principal(request: web.Request) -> Principal:
    found: Principal = request[PRINCIPAL]
    return found


def check_patient_id(patient: str) -> None:
    if not ID_PATTERN.match(patient):
        raise error(400, "bad_patient", f"patient id must match {ID_PATTERN.pattern}")


async def visible_patient(request: web.Request, patient: str) -> None:
    """404 for unknown patients, 403 for a station token looking at another station's."""
    check_patient_id(patient)
    who = principal(request)
    row = await request.app[READER].patient(patient)
    if row is None:
        raise error(404, "unknown_patient", f"no patient {patient!r} in this ward")
    if not who.may_see_station(row.station):
        raise error(403, "forbidden", "this token's station does not watch that patient")


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def servingz(_request: web.Request) -> web.Response:
    """200: this daemon holds its ward and serves it (a waiting standby answers 503). For load balancers."""
    return json_response({"serving": True})


async def readyz(request: web.Request) -> web.Response:
    parts = request.app[READY]()
    return json_response({"ready": all(parts.values()), **parts}, status=200 if all(parts.values()) else 503)


async def openapi(request: web.Request) -> web.Response:
    from monitorme.web.openapi import document

    return json_response(document([spec.vital for spec in request.app[READER].registry]))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[METRICS].render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def list_patients(request: web.Request) -> web.Response:
    who = principal(request)
    reader = request.app[READER]
    rows = await reader.patients(station=who.station if who.role is Role.STATION else None)
    control = request.app[CONTROL]
    return json_response({"patients": [{**r.as_json(), **(control.patient_status(r.patient) or {})} for r in rows]})


async def put_patient(request: web.Request) -> web.Response:
    who = principal(request)
    if who.role is not Role.ADMIN:
        raise error(403, "forbidden", "only admin tokens may admit or move patients")
    patient = request.match_info["patient"]
    check_patient_id(patient)
    body = await json_object(request)
    if set(body) - {"station", "bed", "thresholds"}:
        raise error(400, "bad_body", "body is an object with station, bed, thresholds")
    station, bed, thresholds = body.get("station"), body.get("bed"), body.get("thresholds")
    for name, value in (("station", station), ("bed", bed)):
        if value is not None and (not isinstance(value, str) or not ID_PATTERN.match(value)):
            raise error(400, "bad_body", f"{name} must be a string matching {ID_PATTERN.pattern}")
    if thresholds is not None and not isinstance(thresholds, dict):
        raise error(400, "bad_body", "thresholds must be an object")
    control = request.app[CONTROL]
    if thresholds is not None:
        try:
            control.validate_thresholds(thresholds)
        except ConfigError as exc:
            raise error(400, "bad_thresholds", f"{exc.key}: {exc.problem}") from None
    row = await request.app[READER].put_patient(patient, station, bed, thresholds)
    control.patient_changed(patient, row.station, row.thresholds)  # applied to the analysis at once
    control.audit(who, "put_patient", patient, detail={k: v for k, v in body.items()})
    return json_response(row.as_json())


async def list_alerts(request: web.Request) -> web.Response:
    who = principal(request)
    q = request.query
    patient = q.get("patient")
    if patient is not None:
        await visible_patient(request, patient)
    state = q.get("state")
    if state is not None and state not in ("open", "raised", "escalated", "acknowledged", "resolved"):
        raise error(400, "bad_state", "state is open, raised, escalated, acknowledged or resolved")
    station = who.station if who.role is Role.STATION else None
    alerts = await request.app[READER].alerts(patient=patient, state=state, station=station)
    return json_response({"alerts": alerts})


async def ack_alert(request: web.Request) -> web.Response:
    who = principal(request)
    alert_id = request.match_info["alert_id"]
    control = request.app[CONTROL]
    found = next((a for a in control.open_alerts() if a.id == alert_id), None)
    if found is None:
        raise error(404, "unknown_alert", "no open alert with that id")
    if not who.may_see_station(control.patient_station(found.patient)):
        raise error(403, "forbidden", "this token's station does not watch that patient")
    changed = control.acknowledge(alert_id, who.name)
    if changed is not None:
        control.audit(who, "acknowledge", found.patient, alert_id, {"rule": found.rule, "via": "api"})
    return json_response({"alert": (changed or found).as_json()})


async def create_snapshot(request: web.Request) -> web.Response:
    """``POST /api/patients/{p}/snapshots``: a FHIR R4 Bundle of the chosen vitals and range, queued for upload."""
    who = principal(request)
    if who.role is Role.STATION:
        raise error(403, "forbidden", "snapshots are uploaded by clinician and admin tokens")
    patient = request.match_info["patient"]
    await visible_patient(request, patient)
    control = request.app[CONTROL]
    if not control.snapshots_enabled():
        raise error(503, "not_configured", "set MONITORME_MYMEDICALDATA_URL to upload snapshots")
    body = await json_object(request, empty_ok=True)
    reader = request.app[READER]
    if set(body) - {"vitals", "from", "to"}:
        raise error(400, "bad_body", "body is {vitals: [...], from, to}")
    vitals = body.get("vitals") or list(reader.registry.vitals)
    if not isinstance(vitals, list) or any(v not in reader.registry for v in vitals):
        raise error(400, "unknown_vital", f"vitals are among {', '.join(reader.registry.vitals)}")
    from_ms, to_ms = time_range(body)
    snapshot = await reader.create_snapshot(patient, vitals, from_ms, to_ms, who.name)
    control.snapshot_queued()
    control.audit(who, "snapshot", patient, detail={"snapshot": snapshot["id"], "vitals": vitals})
    return json_response(snapshot, status=201)


async def get_snapshot(request: web.Request) -> web.Response:
    who = principal(request)
    found = await request.app[READER].snapshot(request.match_info["snapshot_id"])
    if found is None:
        raise error(404, "unknown_snapshot", "no snapshot with that id")
    if who.role is Role.STATION:
        await visible_patient(request, found["patient"])
    return json_response(found)


async def discharge_patient(request: web.Request) -> web.Response:
    """``DELETE /api/patients/{patient}`` (admin): closes its alerts, frees its state; readings stay 24 h."""
    who = principal(request)
    if who.role is not Role.ADMIN:
        raise error(403, "forbidden", "only admin tokens may discharge patients")
    patient = request.match_info["patient"]
    check_patient_id(patient)
    if not await request.app[READER].discharge(patient):
        raise error(404, "unknown_patient", f"no admitted patient {patient!r} in this ward")
    control = request.app[CONTROL]
    control.discharged(patient)
    control.audit(who, "discharge", patient)
    return json_response({"patient": patient, "discharged": True})


async def history(request: web.Request) -> web.Response:
    patient = request.match_info["patient"]
    await visible_patient(request, patient)
    reader = request.app[READER]
    q = request.query
    from_ms, to_ms = time_range(q)
    max_points = None
    if "max_points" in q:
        if not q["max_points"].isdigit() or not 2 <= int(q["max_points"]) <= 100_000:
            raise error(400, "bad_max_points", "max_points must be an integer in 2..100000")
        max_points = int(q["max_points"])
    vital = q.get("vital")
    try:
        if vital is not None:
            if vital not in reader.registry:
                raise error(400, "unknown_vital", f"vital must be one of {', '.join(reader.registry.vitals)}")
            readings = await reader.history(patient, vital, from_ms, to_ms, max_points)
            return json_response({"patient": patient, "vital": vital, "readings": readings})
        vitals = {v: await reader.history(patient, v, from_ms, to_ms, max_points) for v in reader.registry.vitals}
    except TooManyReadings as exc:
        raise error(400, "too_many_readings",
                    f"{exc.count} readings in that range; narrow it or pass max_points") from None
    return json_response({"patient": patient, "vitals": {v: r for v, r in vitals.items() if r}})


async def station_socket(request: web.Request) -> web.StreamResponse:
    """``GET /ws/stations/{station}?token=T``: a station token for this station, or a clinician/admin."""
    who = principal(request)
    station = request.match_info["station"]
    if not ID_PATTERN.match(station):
        raise error(400, "bad_station", f"station id must match {ID_PATTERN.pattern}")
    if not who.may_see_station(station):
        raise error(403, "forbidden", "this token belongs to another station")
    return await request.app[CONTROL].serve_station(request, station, who)


async def ward_alert_socket(request: web.Request) -> web.StreamResponse:
    """``GET /ws/alerts?token=T``: every alert change of the ward, for clinicians' phones."""
    who = principal(request)
    if who.role is Role.STATION:
        raise error(403, "forbidden", "the ward's alert feed is for clinician and admin tokens")
    return await request.app[CONTROL].serve_station(request, WARD, who)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/servingz", servingz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/patients", list_patients)
    app.router.add_put("/api/patients/{patient}", put_patient)
    app.router.add_delete("/api/patients/{patient}", discharge_patient)
    app.router.add_post("/api/patients/{patient}/snapshots", create_snapshot)
    app.router.add_get("/api/snapshots/{snapshot_id}", get_snapshot)
    app.router.add_get("/api/patients/{patient}/history", history)
    app.router.add_get("/api/alerts", list_alerts)
    app.router.add_post("/api/alerts/{alert_id}/ack", ack_alert)
    app.router.add_get("/ws/stations/{station}", station_socket)
    app.router.add_get("/ws/alerts", ward_alert_socket)

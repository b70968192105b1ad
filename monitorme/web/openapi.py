"""The REST API as an OpenAPI 3.0 document, served at ``GET /api/openapi.json`` (CONTRACT.md §5).

Written by hand next to the handlers so it says what they accept; the API fuzz test
(tests/faults/test_api_fuzz.py) drives every operation from it with schemathesis and fails on
any 5xx or on a reply that does not match what is documented here.
"""

from __future__ import annotations

from typing import Any

_ID = {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}$"}  # decode.ID_PATTERN
_TIME = {"oneOf": [{"type": "integer", "minimum": 0},
                   {"type": "string", "format": "date-time", "pattern": r"^(19[7-9]\d|20\d\d)-"}],
         "description": "epoch milliseconds or RFC 3339 (1970..2099)"}
_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad request", 401: "no or unknown token", 403: "outside the token's scope",
            404: "not found", 409: "conflict", 429: "too many failed logins from this address (Retry-After)",
            503: "not ready or the database is away"}
    # every authenticated operation can answer 429 once an address has failed to log in too often
    return {str(c): _json({"$ref": "#/components/schemas/Error"}, text[c]) for c in (*codes, 429)}


_PATIENT = {"name": "patient", "in": "path", "required": True, "schema": _ID}
_READING = {"type": "object", "required": ["ts", "value"],
            "properties": {"ts": {"type": "integer"}, "value": {}}}
_ALERT = {"type": "object", "required": ["id", "patient", "rule", "priority", "state", "ts"],
          "properties": {"id": {"type": "string"}, "patient": {"type": "string"}, "rule": {"type": "string"},
                         "priority": {"enum": ["high", "medium", "low"]},
                         "state": {"enum": ["raised", "escalated", "acknowledged", "resolved"]},
                         "ts": {"type": "integer"}}}

def document(vitals: list[str]) -> dict[str, Any]:
    """The document for this daemon: ``vitals`` are the kinds its pipelines define."""
    vital = {"type": "string", "enum": sorted(vitals)}
    return _document(vital)


def _document(vital: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "MonitorMe ward API", "version": "1",
                 "description": "CONTRACT.md §5. Authorization: Bearer token (station, clinician or admin)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR, "Alert": _ALERT},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"security": [], "responses": {"200": _json({"type": "object"}, "alive")}}},
            "/readyz": {"get": {"security": [], "responses": {
                "200": _json({"type": "object", "required": ["ready"]}, "broker and database connected"),
                "503": _json({"type": "object", "required": ["ready"]}, "not ready")}}},
            "/servingz": {"get": {"security": [], "responses": {
                "200": _json({"type": "object"}, "this daemon serves its ward"),
                "503": _json({"type": "object"}, "a waiting hot standby")}}},
            "/api/patients": {"get": {"responses": {
                "200": _json({"type": "object", "required": ["patients"],
                              "properties": {"patients": {"type": "array", "items": {"type": "object"}}}}),
                **_errors(401)}}},
            "/api/patients/{patient}": {
                "put": {"parameters": [_PATIENT],
                        "requestBody": {"required": True, "content": {"application/json": {"schema": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"station": {**_ID, "nullable": True}, "bed": {**_ID, "nullable": True},
                                           "thresholds": {"type": "object", "nullable": True}}}}}},
                        "responses": {"200": _json({"type": "object"}), **_errors(400, 401, 403)}},
                "delete": {"parameters": [_PATIENT], "responses": {
                    "200": _json({"type": "object"}, "discharged"), **_errors(400, 401, 403, 404)}},
            },
            "/api/patients/{patient}/history": {"get": {
                "parameters": [_PATIENT,
                               {"name": "vital", "in": "query", "schema": vital},
                               {"name": "from", "in": "query", "schema": _TIME},
                               {"name": "to", "in": "query", "schema": _TIME},
                               {"name": "max_points", "in": "query", "schema": {"type": "integer", "minimum": 2}}],
                "responses": {"200": _json({"type": "object", "required": ["patient"], "properties": {
                    "patient": {"type": "string"}, "vital": {"type": "string"},
                    "readings": {"type": "array", "items": _READING},
                    "vitals": {"type": "object", "additionalProperties": {"type": "array", "items": _READING}}}}),
                    **_errors(400, 401, 403, 404)}}},
            "/api/patients/{patient}/snapshots": {"post": {
                "parameters": [_PATIENT],
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"vitals": {"type": "array", "items": vital},
                                                     "from": _TIME, "to": _TIME}}}}},
                "responses": {"201": _json({"type": "object", "required": ["id"]}, "snapshot queued"),
                              **_errors(400, 401, 403, 404, 503)}}},
            "/api/snapshots/{snapshot_id}": {"get": {
                "parameters": [{"name": "snapshot_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"type": "object"}), **_errors(400, 401, 403, 404)}}},
            "/api/alerts": {"get": {
                "parameters": [{"name": "patient", "in": "query", "schema": _ID},
                               {"name": "state", "in": "query", "schema": {
                                   "enum": ["open", "raised", "escalated", "acknowledged", "resolved"]}}],
                "responses": {"200": _json({"type": "object", "required": ["alerts"], "properties": {
                    "alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}}}}),
                    **_errors(400, 401, 403, 404)}}},
            "/api/alerts/{alert_id}/ack": {"post": {
                "parameters": [{"name": "alert_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"$ref": "#/components/schemas/Alert"}), **_errors(400, 401, 403, 404)}}},
        },
    }

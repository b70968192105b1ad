"""The aiohttp application: routes, bearer-token middleware and the typed app keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from monitorme.adapters.pg_reader import PgReader
from monitorme.metrics import Metrics
from monitorme.web import api
from monitorme.web.auth import NO_AUTH, Role, TokenBook

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/openapi.json"})
STATIC_DIR = Path(__file__).resolve().parent / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(tokens: TokenBook | None, metrics: Metrics) -> Middleware:
    """401 without a known token, except on the public health paths; the token is never logged."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        if tokens is None:
            request[api.PRINCIPAL] = NO_AUTH
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token", "")
        who = tokens.lookup(token) if token else None
        if who is None:
            metrics.inc("monitorme_http_auth_failures_total")
            raise api.error(401, "unauthorized", "a valid bearer token is required")
        request[api.PRINCIPAL] = who
        return await handler(request)

    return middleware


def create_app(
    reader: PgReader,
    metrics: Metrics,
    tokens: TokenBook | None,
    ready: Callable[[], dict[str, bool]],
    control: api.Control,
) -> web.Application:
    """Build the web app. ``tokens=None`` means ``--insecure-no-auth``."""
    app = web.Application(middlewares=[auth_middleware(tokens, metrics)], client_max_size=1 << 20)
    app[api.READER] = reader
    app[api.METRICS] = metrics
    app[api.READY] = ready
    app[api.CONTROL] = control
    api.add_routes(app)
    app.router.add_get("/stations/{station}", station_page)
    app.router.add_get("/alerts", phone_page)
    app.router.add_get("/patients/{patient}", history_page)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    return app


async def history_page(request: web.Request) -> web.StreamResponse:
    """A patient's 24-h review (charts, alerts on the time line) for clinicians and that patient's station."""
    await api.visible_patient(request, request.match_info["patient"])
    return web.FileResponse(STATIC_DIR / "history.html", headers={"Cache-Control": "no-store"})


async def phone_page(request: web.Request) -> web.StreamResponse:
    """The clinician's phone view of the ward's open alerts (live; browser notifications)."""
    if request[api.PRINCIPAL].role is Role.STATION:
        raise api.error(403, "forbidden", "the ward's alerts are for clinician and admin tokens")
    return web.FileResponse(STATIC_DIR / "alerts.html", headers={"Cache-Control": "no-store"})


async def station_page(request: web.Request) -> web.StreamResponse:
    """The station screen (static; its WebSocket carries the token and the station's patients)."""
    who = request[api.PRINCIPAL]
    if not who.may_see_station(request.match_info["station"]):
        raise api.error(403, "forbidden", "this token belongs to another station")
    return web.FileResponse(STATIC_DIR / "station.html", headers={"Cache-Control": "no-store"})

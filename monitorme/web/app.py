"""The aiohttp application: routes, bearer-token middleware and the typed app keys."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from monitorme.adapters.pg_reader import PgReader
from monitorme.metrics import Metrics
from monitorme.web import api
from monitorme.web.auth import NO_AUTH, Role, TokenBook

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/servingz", "/metrics", "/api/openapi.json"})
STATIC_DIR = Path(__file__).resolve().parent / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FailedAuthLimiter:
    """At most ``limit`` failed logins per client address per ``window_s``; then 429 until it cools off.

    Token guessing gets nowhere and costs little: a limited address is refused before its token is
    looked at. Behind a reverse proxy every client shares the proxy's address: limit there too.
    """

    def __init__(self, limit: int = 20, window_s: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float] | None:
        seen = self._failures.get(client)
        if seen is not None:
            cutoff = self.clock() - self.window_s
            while seen and seen[0] < cutoff:
                seen.popleft()
            if not seen:
                del self._failures[client]
                return None
        return seen

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: it may)."""
        seen = self._recent(client)
        if seen is None or len(seen) < self.limit:
            return 0.0
        return max(1.0, seen[0] + self.window_s - self.clock())

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self.max_clients:
            self._failures.pop(next(iter(self._failures)))  # oldest first: bounded memory under a flood
        self._failures.setdefault(client, deque()).append(self.clock())


def auth_middleware(tokens: TokenBook | None, metrics: Metrics,
                    limiter: FailedAuthLimiter | None = None) -> Middleware:
    """401 without a known token, except on the public health paths; the token is never logged."""
    limiter = limiter or FailedAuthLimiter()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        if tokens is None:
            request[api.PRINCIPAL] = NO_AUTH
            return await handler(request)
        client = request.remote or "?"
        wait = limiter.retry_after(client)
        if wait:
            metrics.inc("monitorme_http_auth_limited_total")
            raise web.HTTPTooManyRequests(
                text=orjson.dumps({"error": "too_many_failures",
                                   "detail": f"too many failed logins; retry in {wait:.0f} s"}).decode(),
                content_type="application/json", headers={"Retry-After": str(round(wait))})
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token", "")
        who = tokens.lookup(token) if token else None
        if who is None:
            metrics.inc("monitorme_http_auth_failures_total")
            limiter.failed(client)
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
    auth_failures_per_minute: int = 20,
) -> web.Application:
    """Build the web app. ``tokens=None`` means ``--insecure-no-auth``."""
    limiter = FailedAuthLimiter(limit=auth_failures_per_minute, window_s=60.0)
    app = web.Application(middlewares=[auth_middleware(tokens, metrics, limiter)], client_max_size=1 << 20)
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

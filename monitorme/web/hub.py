"""Station websockets: ``hello`` / ``vitals`` / ``alert`` frames (CONTRACT.md §4), one slow client never
delaying another.

Each client has its own small sender task. Vitals are coalesced per (patient, vital) and sent at
most every 50 ms, so a client that falls behind sees the latest values, not a backlog; alerts are
never dropped: a client holding more than ``max_pending_alerts`` unsent is disconnected (counted),
and gets a fresh ``hello`` when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import WSCloseCode, web

from monitorme.core.alerts import Alert
from monitorme.core.analysis import ScoreUpdate
from monitorme.core.model import Reading, Waveform
from monitorme.metrics import Metrics

log = logging.getLogger(__name__)
COALESCE_S = 0.05
WARD = "*"  # the clinicians' feed: every patient's alerts, no vitals


def reading_value(value: object) -> Any:
    """A reading's value as it came in (an ECG chunk as {hz, samples})."""
    if isinstance(value, Waveform):
        return {"hz": value.hz, "samples": np.frombuffer(value.samples, dtype="<f4")}
    return value


def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame, option=orjson.OPT_SERIALIZE_NUMPY).decode()


@dataclass(eq=False)
class StationClient:
    """One connected screen."""

    station: str
    ws: web.WebSocketResponse
    name: str
    vitals: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    frames: list[str] = field(default_factory=list)  # alerts and other must-deliver frames, in order
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False


class StationHub:
    """Fans engine outputs out to the station screens that watch each patient."""

    def __init__(self, metrics: Metrics, station_of: Callable[[str], str | None],
                 max_pending_alerts: int = 1000) -> None:
        self.metrics = metrics
        self.station_of = station_of
        self.max_pending_alerts = max_pending_alerts
        self.clients: dict[str, set[StationClient]] = {}
        metrics.gauge("monitorme_ws_clients", lambda: sum(len(c) for c in self.clients.values()))

    # -- producer side (the processor's dispatch; synchronous, never waits) -----------
    def publish(self, readings: Iterable[Reading], alerts: Iterable[Alert], scores: Iterable[ScoreUpdate]) -> None:
        if not self.clients:
            return
        for r in readings:
            station = self.station_of(r.patient)
            watchers = self.clients.get(station) if station is not None else None
            if not watchers:
                continue
            item = {"patient": r.patient, "vital": r.vital, "ts": r.ts_ms, "value": reading_value(r.value)}
            for client in watchers:
                client.vitals[(r.patient, r.vital)] = item  # coalesce: the latest wins
                client.wake.set()
        for alert in alerts:
            self._frame(alert.station or self.station_of(alert.patient), {"type": "alert", "alert": alert.as_json()})
        for s in scores:
            score = {"total": s.score.total, "band": s.score.band, "parts": s.score.parts,
                     "partial": s.score.partial, "missing": list(s.score.missing)}
            self._frame(self.station_of(s.patient), {"type": "score", "patient": s.patient, "ts": s.ts,
                                                     "news2": score})

    def status(self, frame: dict[str, Any]) -> None:
        """Tell every screen the feed's state (broker and database), e.g. that readings stopped coming."""
        text = dumps({"type": "status", **frame})
        for watchers in self.clients.values():
            for client in list(watchers):
                if len(client.frames) >= self.max_pending_alerts:
                    self._drop(client, "too_slow")
                    continue
                client.frames.append(text)
                client.wake.set()

    def _frame(self, station: str | None, frame: dict[str, Any]) -> None:
        text = dumps(frame)
        watchers = list(self.clients.get(station, ())) if station is not None else []
        if frame["type"] == "alert":
            watchers += self.clients.get(WARD, ())  # clinicians' phones see every alert of the ward
        for client in watchers:
            if len(client.frames) >= self.max_pending_alerts:
                self._drop(client, "too_slow")
                continue
            client.frames.append(text)
            client.wake.set()

    def _drop(self, client: StationClient, reason: str) -> None:
        client.closed = True
        client.wake.set()
        self.clients.get(client.station, set()).discard(client)
        self.metrics.inc("monitorme_ws_disconnected_total", reason=reason)

    # -- one connection ------------------------------------------------------------
    async def serve(self, request: web.Request, station: str, name: str, hello: dict[str, Any],
                    on_ack: Callable[[str], None]) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=64 * 1024)
        await ws.prepare(request)
        client = StationClient(station, ws, name)
        client.frames.append(dumps(hello))
        client.wake.set()
        self.clients.setdefault(station, set()).add(client)
        self.metrics.inc("monitorme_ws_connections_total")
        sender = asyncio.create_task(self._sender(client), name=f"monitorme.ws.{station}")
        try:
            async for msg in ws:
                if msg.type != web.WSMsgType.TEXT:
                    continue
                try:
                    doc = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(doc, dict) and doc.get("type") == "ack" and isinstance(doc.get("alert"), str):
                    on_ack(doc["alert"])
        finally:
            if not client.closed:
                self._drop(client, "closed")
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    async def _sender(self, client: StationClient) -> None:
        last_vitals = 0.0
        ws = client.ws
        while not client.closed:
            await client.wake.wait()
            client.wake.clear()
            while client.frames and not client.closed:
                frames, client.frames = client.frames, []
                for text in frames:
                    await ws.send_str(text)
            if client.vitals and not client.closed:
                wait = COALESCE_S - (time.monotonic() - last_vitals)
                if wait > 0:
                    await asyncio.sleep(wait)  # more readings coalesce meanwhile
                readings, client.vitals = list(client.vitals.values()), {}
                await ws.send_str(dumps({"type": "vitals", "readings": readings}))
                last_vitals = time.monotonic()
                if client.vitals or client.frames:
                    client.wake.set()
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow: reconnect for a fresh hello")

    async def aclose(self) -> None:
        for clients in list(self.clients.values()):
            for client in list(clients):
                client.closed = True
                await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        self.clients.clear()

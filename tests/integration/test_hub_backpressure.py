"""One slow screen never delays another: a client that stops reading is disconnected and counted."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from monitorme.core.alerts import Alert, AlertKind, AlertState, Priority
from monitorme.demo.services import free_port
from monitorme.metrics import Metrics
from monitorme.web.hub import StationHub

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def big_alert(i: int) -> Alert:
    return Alert(id=f"a{i}", ward="w", patient="p1", station="s1", rule="spo2_low", vital="spo2",
                 kind=AlertKind.THRESHOLD, priority=Priority.MEDIUM, state=AlertState.RAISED, value=88.0, ts=i,
                 message="x" * 200_000, patient_state="awake", raised_ts=i)


async def test_a_client_that_stops_reading_is_cut_off_while_another_gets_everything() -> None:
    metrics = Metrics()
    hub = StationHub(metrics, lambda patient: "s1", max_pending_alerts=5)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await hub.serve(request, "s1", "test", {"type": "hello", "station": "s1", "patients": []},
                               lambda alert_id: None)

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            slow = await http.ws_connect(f"http://127.0.0.1:{port}/ws", max_msg_size=0)
            fast = await http.ws_connect(f"http://127.0.0.1:{port}/ws", max_msg_size=0)
            received = 0

            async def read_fast() -> None:
                nonlocal received
                async for msg in fast:
                    if msg.type == aiohttp.WSMsgType.TEXT and '"type":"alert"' in msg.data[:20]:
                        received += 1
                        if received == 300:
                            return

            reader = asyncio.create_task(read_fast())
            for i in range(300):  # 60 MB of alerts; the slow client reads none of it
                hub.publish((), [big_alert(i)], ())
                await asyncio.sleep(0.002)
            await asyncio.wait_for(reader, 30)
            assert received == 300  # the reading client got every alert, in spite of the other
            assert metrics.get("monitorme_ws_disconnected_total", reason="too_slow") == 1
            await asyncio.sleep(0.5)
            assert len(hub.clients["s1"]) == 1
            await slow.close()
            await fast.close()
    finally:
        await hub.aclose()
        await runner.cleanup()

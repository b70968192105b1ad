"""Run a real ward daemon inside the test's event loop, against real services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import orjson

from monitorme.config import Settings
from monitorme.runtime.app import Daemon
from monitorme.sim.model import SimMessage

TOKENS = """
[[token]]
token = "admin-token-1"
role = "admin"
[[token]]
token = "clinician-token-1"
role = "clinician"
[[token]]
token = "s1-token-0001"
role = "station"
station = "s1"
[[token]]
token = "s2-token-0001"
role = "station"
station = "s2"
"""
ADMIN = {"Authorization": "Bearer admin-token-1"}
CLINICIAN = {"Authorization": "Bearer clinician-token-1"}
STATION1 = {"Authorization": "Bearer s1-token-0001"}


def make_settings(tmp_path: Path, *, ward: str, mqtt_url: str, dsn: str, protocol: int, **extra: object) -> Settings:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    base = Settings(ward=ward, mqtt_url=mqtt_url, database_url=dsn, http_listen="127.0.0.1:0",
                    http_tokens=str(tokens), mqtt_protocol=protocol, mqtt_client_id=f"monitorme-{ward}")
    return replace(base, **extra)  # type: ignore[arg-type]


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Daemon]:
    """A daemon that is subscribed and ready; stopped gracefully on exit."""
    stop = asyncio.Event()
    async with Daemon(settings) as daemon:
        task = asyncio.create_task(daemon.run_until(stop))
        try:
            deadline = time.monotonic() + 15
            while not daemon.source.connected:
                assert time.monotonic() < deadline, "daemon did not connect to the broker"
                assert not task.done(), task.exception()
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the SUBSCRIBE has been sent with CONNECT's success; let SUBACK land
            yield daemon
        finally:  # also when it never connected: the daemon shuts down before the test goes on
            stop.set()
            await task


def base_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.http_port}"


async def get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, object]:
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_for_count(dsn: str, sql: str, expected: int, timeout_s: float) -> int:
    """Poll ``sql`` (a count) until it reaches ``expected`` or the time is up; return the last count."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            count = int(await conn.fetchval(sql))
            if count >= expected or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


def reading(ward: str, patient: str, vital: str, ts: int, value: object) -> SimMessage:
    """One reading message, as a device would publish it, for the simulator's publisher."""
    return SimMessage(f"monitorme/{ward}/{patient}/{vital}", orjson.dumps({"ts": ts, "value": value}), ts, patient,
                      vital)

"""Shared pytest fixtures: PostgreSQL and MQTT, per-test isolation, Hypothesis profiles."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import secrets
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import settings

from monitorme.demo.services import EmbeddedPostgres, port_open, start_broker, with_database

T = TypeVar("T")

_KEPT_ENV = frozenset({"MONITORME_TEST_PG_DSN", "MONITORME_TEST_MQTT_URL"})
_SYSTEM_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_SYSTEM_MQTT_URL = "mqtt://127.0.0.1:1883"


def pytest_configure(config: pytest.Config) -> None:
    settings.register_profile("dev", max_examples=50)
    settings.register_profile("ci", max_examples=1000, deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # asyncio.run in a worker thread: never touches the main thread's (pytest-asyncio's) loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _execute(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strip the host's MONITORME_* settings so they cannot leak into a test."""
    for name in list(os.environ):
        if name.startswith("MONITORME_") and name not in _KEPT_ENV:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A superuser DSN: $MONITORME_TEST_PG_DSN, else local 5432, else an embedded server."""
    if dsn := os.environ.get("MONITORME_TEST_PG_DSN"):
        yield dsn
    elif port_open("127.0.0.1", 5432):
        yield _SYSTEM_PG_DSN
    else:
        with EmbeddedPostgres() as pg:
            yield pg.dsn


@pytest.fixture(scope="session")
def pg_template(pg_admin_dsn: str) -> Iterator[str]:
    """Name of a database holding all migrations, made once per session as a template."""
    from monitorme.adapters.migrations import apply_migrations

    name = f"monitorme_tmpl_{secrets.token_hex(4)}"
    _run(_execute(pg_admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        _run(apply_migrations(with_database(pg_admin_dsn, name)))
        yield name
    finally:
        _run(_execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_dsn(pg_admin_dsn: str, pg_template: str) -> Iterator[str]:
    """DSN of a fresh, migrated database for this test alone, dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    _run(_execute(pg_admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    try:
        yield with_database(pg_admin_dsn, name)
    finally:
        _run(_execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """$MONITORME_TEST_MQTT_URL, else the broker on 1883 (stock limits!), else a private one."""
    if url := os.environ.get("MONITORME_TEST_MQTT_URL"):
        yield url
    elif port_open("127.0.0.1", 1883):
        yield _SYSTEM_MQTT_URL
    else:
        with start_broker() as url:
            yield url


@pytest.fixture(scope="session")
def tuned_mqtt_url() -> Iterator[str]:
    """A private broker that does not drop: no-loss Mosquitto, or amqtt if mosquitto is absent."""
    with start_broker() as url:
        yield url


@pytest.fixture
def ward(request: pytest.FixtureRequest) -> str:
    """A ward id unique to this test, for topics `monitorme/{ward}/...`; [A-Za-z0-9_-]{1,64}."""
    suffix = secrets.token_hex(3)
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-") or "t"
    return f"{base[: 64 - len(suffix) - 1]}-{suffix}"


def broker_protocol(url: str) -> int:
    """MQTT protocol the daemon should speak to a test broker: 5, or 4 for the amqtt fallback."""
    from monitorme.demo.services import MosquittoBroker

    if url in (_SYSTEM_MQTT_URL, os.environ.get("MONITORME_TEST_MQTT_URL")):
        return 5
    return 5 if MosquittoBroker.available() else 4

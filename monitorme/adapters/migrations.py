"""Apply ``migrations/*.sql`` in order, once each, safely when several daemons start together."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg

from monitorme.config import data_dir
from monitorme.errors import ConfigError, StoreError

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x6D6F6E6D  # "monm": one advisory lock for every MonitorMe migrator


def migrations_dir() -> Path:
    """The migrations shipped with the package (or the source tree when run from it)."""
    return data_dir("migrations")


def list_migrations(directory: Path) -> list[tuple[str, Path]]:
    """Return ``(version, path)`` in order; refuse files that break the naming rule."""
    found: list[tuple[str, Path]] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ConfigError(f"migrations/{path.name}", "must be named NNNN_what.sql")
        found.append((path.stem, path))
    versions = [v.split("_", 1)[0] for v, _ in found]
    if len(set(versions)) != len(versions):
        raise ConfigError("migrations", "two files share a number")
    return found


async def apply_migrations(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations, each in its own transaction.

    Args:
        dsn: PostgreSQL URL.
        directory: where the ``NNNN_*.sql`` files are; the packaged ones by default.

    Returns:
        The versions applied by this call (empty when the schema was current).

    Raises:
        StoreError: when the database cannot be reached or a migration fails.
    """
    files = list_migrations(directory or migrations_dir())
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StoreError(f"cannot connect to database: {exc}") from exc
    applied: list[str] = []
    try:
        # A session lock, so a second daemon starting now waits, then finds nothing to do.
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, path in files:
                if version in done:
                    continue
                sql = path.read_text(encoding="utf-8")
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                log.info("migration_applied", extra={"version": version})
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    except asyncpg.PostgresError as exc:
        raise StoreError(f"migration failed: {exc}") from exc
    finally:
        await conn.close()
    return applied

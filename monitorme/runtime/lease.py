"""One active daemon per ward: the holder of the ward's PostgreSQL advisory lock consumes and serves.

A second daemon for the same ward (a hot standby) waits for the lock. The lock lives on its own
connection: when the holder dies, PostgreSQL sees the connection close and releases the lock,
the standby takes it within a poll interval, connects to MQTT with the same client id and so
inherits the persistent session with every unacknowledged reading. If the holder's lock
connection breaks (a database restart) it tries to take the lock again at once; only if another
daemon got it first does it stop, so that two daemons never consume one ward for long.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import asyncpg

log = logging.getLogger(__name__)
_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class LeaseLost(RuntimeError):
    """Another daemon took this ward's lock; this one stopped consuming (exit, come back as standby)."""


def lock_key(ward: str) -> int:
    """A stable signed 64-bit advisory lock key for the ward."""
    return int.from_bytes(hashlib.blake2b(f"monitorme-ward:{ward}".encode(), digest_size=8).digest(), "big",
                          signed=True)


class WardLease:
    """``await acquire()``; then ``lost`` is set if it has to be given up."""

    def __init__(self, dsn: str, ward: str, poll_s: float = 1.0) -> None:
        self.dsn = dsn
        self.ward = ward
        self.key = lock_key(ward)
        self.poll_s = poll_s
        self.lost = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._broken = asyncio.Event()

    async def _try(self) -> bool | None:
        """True: ours; False: another daemon holds it; None: the database did not answer."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.dsn, timeout=5)
                self._conn.add_termination_listener(lambda _c: self._broken.set())
            async with asyncio.timeout(5):
                got = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
        except Exception as exc:  # whatever the database did, the answer is "unknown"
            log.warning("lease_database_error", extra={"error": repr(exc)[:300]})
            await self._close()
            return None
        if got:
            self._broken.clear()
        return got

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until the ward's lock is ours (True) or ``stop`` is set (False)."""
        said = False
        while not stop.is_set():
            if await self._try():
                log.info("lease_acquired", extra={"ward": self.ward})
                return True
            if not said:
                log.info("standby_waiting", extra={"ward": self.ward, "reason": "another daemon holds this ward"})
                said = True
            try:
                async with asyncio.timeout(self.poll_s):
                    await stop.wait()
            except TimeoutError:
                pass
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """While active: if the lock connection breaks, take the lock again; give up only to another holder."""
        while not stop.is_set():
            broken = asyncio.ensure_future(self._broken.wait())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([broken, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                broken.cancel()
                stopping.cancel()
            if stop.is_set():
                return
            log.warning("lease_connection_lost", extra={"ward": self.ward})
            while not stop.is_set():
                got = await self._try()
                if got:
                    log.info("lease_reacquired", extra={"ward": self.ward})
                    break
                if got is False:
                    log.error("lease_lost", extra={"ward": self.ward, "reason": "another daemon took this ward"})
                    self.lost.set()
                    return
                await asyncio.sleep(self.poll_s)  # database away: keep working (spool), keep trying

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def release(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            try:
                async with asyncio.timeout(2):
                    await self._conn.execute("SELECT pg_advisory_unlock($1)", self.key)
                    await self._conn.close()
            except _ERRORS:
                self._conn.terminate()
        self._conn = None

"""The snapshot outbox -> HTTPS POST to MyMedicalData with an Idempotency-Key; retried with backoff, across restarts."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import Any

import aiohttp
import asyncpg
import orjson

from monitorme.metrics import Metrics

log = logging.getLogger(__name__)


class SnapshotUploader:
    """Drains the ``snapshots`` table; a row is delivered when MyMedicalData answers 2xx.

    Args:
        pool: database pool (the outbox lives in PostgreSQL, so it survives restarts).
        url: the https:// endpoint; token: sent as ``Authorization: Bearer``; ca_file: CA bundle to trust.
    """

    def __init__(self, pool: asyncpg.Pool, ward: str, url: str, token: str, ca_file: str | None,
                 metrics: Metrics, *, max_backoff_s: float = 300.0, timeout_s: float = 15.0) -> None:
        self.pool = pool
        self.ward = ward
        self.url = url
        self.token = token
        self.ssl = ssl.create_default_context(cafile=ca_file or None)  # verification always on
        self.metrics = metrics
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.wake = asyncio.Event()

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
            while True:
                try:
                    delay = await self._pass(http)
                except Exception as exc:  # the outbox waits in PostgreSQL; never take the daemon down
                    log.warning("snapshot_outbox_unavailable", extra={"error": repr(exc)[:300]})
                    delay = 5.0
                self.wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
                except TimeoutError:
                    pass

    async def _pass(self, http: aiohttp.ClientSession) -> float:
        """Try every due snapshot once; return how long to sleep until the next is due."""
        due = await self.pool.fetch(
            "SELECT id::text AS id, bundle, attempts FROM snapshots WHERE ward = $1 AND state = 'pending'"
            " AND next_attempt_at <= now() ORDER BY created_at LIMIT 20", self.ward)
        for row in due:
            await self._attempt(http, row["id"], row["bundle"], row["attempts"])
        nxt = await self.pool.fetchval(
            "SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now()) FROM snapshots"
            " WHERE ward = $1 AND state = 'pending'", self.ward)
        return 60.0 if nxt is None else max(0.05, min(60.0, float(nxt)))

    async def _attempt(self, http: aiohttp.ClientSession, snapshot_id: str, bundle: str, attempts: int) -> None:
        headers = {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {self.token}",
                   "Idempotency-Key": snapshot_id}
        status: int | None = None
        error: str | None = None
        try:
            async with http.post(self.url, data=bundle.encode(), headers=headers, ssl=self.ssl) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    error = f"HTTP {status}: {(await resp.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        if error is None:
            await self.pool.execute(
                "UPDATE snapshots SET state = 'delivered', attempts = attempts + 1, delivered_at = now(),"
                " response_status = $2, last_error = NULL WHERE id = $1::uuid", snapshot_id, status)
            self.metrics.inc("monitorme_snapshots_delivered_total")
            log.info("snapshot_delivered", extra={"snapshot": snapshot_id, "attempts": attempts + 1})
            return
        backoff = random.uniform(0.5, 1.0) * min(self.max_backoff_s, 2.0 ** min(attempts, 20))
        await self.pool.execute(
            "UPDATE snapshots SET attempts = attempts + 1, last_error = $2, response_status = $3,"
            " next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1::uuid",
            snapshot_id, error, status, backoff)
        self.metrics.inc("monitorme_snapshot_upload_failures_total")
        log.warning("snapshot_upload_retry", extra={"snapshot": snapshot_id, "attempt": attempts + 1,
                                                    "error": error, "retry_in_s": round(backoff, 1)})


def snapshot_state(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"], "patient": row["patient_id"], "state": row["state"], "delivered": row["state"] == "delivered",
        "attempts": row["attempts"], "last_error": row["last_error"], "created": row["created_at"],
        "delivered_at": row["delivered_at"], "response_status": row["response_status"],
        "from": row["from_ts"], "to": row["to_ts"], "observations": len(orjson.loads(row["bundle"])["entry"]),
    }

"""Publish alert state changes to ``monitorme/{ward}/{patient}/alerts`` at QoS 1, never shedding one."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

import orjson

from monitorme.adapters.mqtt_source import MqttSource
from monitorme.adapters.mqtt_wire import MqttConnection, MqttWireError
from monitorme.core.alerts import Alert
from monitorme.metrics import Metrics

log = logging.getLogger(__name__)
_RETRY_S = 0.5
_PIPELINE = 500  # alerts handed over at once; the broker's Receive Maximum paces them


class MqttAlertPublisher:
    """Sends alerts over the source's connection, in order; waits out disconnections.

    The queue is unbounded on purpose: alert changes are few (a handful per patient per
    hour) and every one must reach the phones' push gateway.
    """

    def __init__(self, source: MqttSource, ward: str, metrics: Metrics) -> None:
        self.source = source
        self.ward = ward
        self.metrics = metrics
        self._queue: deque[Alert] = deque()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        metrics.describe("monitorme_alerts_published_total", "counter", "Alert changes published on MQTT.")
        metrics.gauge("monitorme_alerts_unpublished", lambda: len(self._queue))

    def put(self, alerts: Iterable[Alert]) -> None:
        self._queue.extend(alerts)
        if self._queue:
            self._drained.clear()
            self._ready.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def drained(self) -> None:
        """Wait until every queued alert has been published."""
        await self._drained.wait()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` and the queue is empty (or the connection is gone at stop)."""
        while True:
            if not self._queue:
                if stop.is_set():
                    return
                self._ready.clear()
                waiter = asyncio.ensure_future(self._ready.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
                continue
            client = self.source.client
            if client is None:
                if stop.is_set():
                    log.warning("alerts_unpublished_at_stop", extra={"count": len(self._queue)})
                    return
                await asyncio.sleep(_RETRY_S)
                continue
            # Pipelined: every queued alert is handed to the client in order at once and their
            # PUBACKs awaited together, so a burst costs one round trip, not one per alert.
            batch = list(self._queue)[:_PIPELINE]
            results = await asyncio.gather(*(self._publish(client, a) for a in batch), return_exceptions=True)
            done = 0
            for result in results:
                if result is not None:
                    break
                done += 1
            for _ in range(done):
                self._queue.popleft()
            self.metrics.inc("monitorme_alerts_published_total", done)
            if done < len(batch):
                failure = next(r for r in results if r is not None)
                log.warning("alert_publish_retry", extra={"error": str(failure), "pending": len(self._queue)})
                self.metrics.inc("monitorme_alert_publish_retries_total")
                await asyncio.sleep(_RETRY_S)  # the rest go again in order; QoS 1 may repeat one
            if not self._queue:
                self._drained.set()

    async def _publish(self, client: MqttConnection, alert: Alert) -> None:
        topic = f"monitorme/{self.ward}/{alert.patient}/alerts"
        try:
            async with asyncio.timeout(10):
                await client.publish(topic, orjson.dumps(alert.as_json()), qos=1)
        except (MqttWireError, TimeoutError) as exc:
            raise _PublishFailed(str(exc)) from exc


class _PublishFailed(Exception):
    """One alert's PUBACK did not come; it stays queued."""

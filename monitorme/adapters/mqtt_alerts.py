"""Publish alert state changes to ``monitorme/{ward}/{patient}/alerts`` at QoS 1, never shedding one."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

import aiomqtt
import orjson

from monitorme.adapters.mqtt_source import MqttSource
from monitorme.core.alerts import Alert
from monitorme.metrics import Metrics

log = logging.getLogger(__name__)
_RETRY_S = 0.5


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
            alert = self._queue[0]
            topic = f"monitorme/{self.ward}/{alert.patient}/alerts"
            try:
                async with asyncio.timeout(10):
                    await client.publish(topic, orjson.dumps(alert.as_json()), qos=1)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.warning("alert_publish_retry", extra={"error": str(exc), "alert": alert.id})
                self.metrics.inc("monitorme_alert_publish_retries_total")
                await asyncio.sleep(_RETRY_S)
                continue
            self._queue.popleft()
            self.metrics.inc("monitorme_alerts_published_total")
            if not self._queue:
                self._drained.set()

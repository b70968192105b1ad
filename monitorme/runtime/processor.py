"""The single loop that feeds raw messages to the engine in batches and hands outputs to the sinks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from monitorme.adapters.mqtt_source import MqttSource
from monitorme.adapters.pg_writer import PgWriter
from monitorme.core.engine import Engine
from monitorme.core.model import Outputs
from monitorme.metrics import Metrics

Dispatch = Callable[[Outputs, list[object]], None]

log = logging.getLogger(__name__)
_SAMPLE_EVERY_S = 60.0  # log the first rejection per reason per minute; count them all


class Processor:
    """Drains the source, one synchronous ``engine.handle`` per batch, never one await per reading."""

    def __init__(
        self,
        source: MqttSource,
        engine: Engine,
        writer: PgWriter,
        metrics: Metrics,
        dispatch: Dispatch,
        *,
        batch_max: int = 5_000,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.source = source
        self.engine = engine
        self.writer = writer
        self.metrics = metrics
        self.dispatch = dispatch
        self.batch_max = batch_max
        self.now_ms = now_ms
        self._last_logged: dict[str, float] = {}
        metrics.describe("monitorme_readings_total", "counter", "Readings accepted, by vital.")
        metrics.describe("monitorme_rejected_total", "counter", "Inputs rejected, by reason.")

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set and the source's buffer is empty."""
        source = self.source
        while True:
            await source.arrived.wait()
            final = stop.is_set()  # on stop: what is buffered now, then out; the rest stays unacked
            batch = source.take(len(source) if final else self.batch_max)
            if batch:
                out = self.engine.handle(batch, self.now_ms())
                self._count(out)
                self.dispatch(out, [m.ack for m in batch if m.ack is not None])
            elif not final:
                source.arrived.clear()
            if final:
                return
            await self.writer.wait_for_room()
            await asyncio.sleep(0)  # let the socket reader and the writer run between batches

    def _count(self, out: Outputs) -> None:
        m = self.metrics
        if out.readings:
            per_vital: dict[str, int] = {}
            for r in out.readings:
                per_vital[r.vital] = per_vital.get(r.vital, 0) + 1
            for vital, n in per_vital.items():
                m.inc("monitorme_readings_total", n, vital=vital)
        if out.late:
            m.inc("monitorme_late_readings_total", out.late)
        if out.duplicates:
            m.inc("monitorme_duplicates_total", out.duplicates, caught="memory")
        if out.admitted:
            m.inc("monitorme_patients_admitted_total", len(out.admitted))
            log.info("patients_admitted", extra={"patients": out.admitted[:20], "count": len(out.admitted)})
        now = time.monotonic()
        for rejection in out.rejections:
            m.inc("monitorme_rejected_total", reason=rejection.reason)
            if now - self._last_logged.get(rejection.reason, -_SAMPLE_EVERY_S) >= _SAMPLE_EVERY_S:
                self._last_logged[rejection.reason] = now
                log.warning("reading_rejected", extra={"reason": rejection.reason, "topic": rejection.topic})

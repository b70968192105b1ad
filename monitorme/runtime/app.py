"""Composition root: build every part from Settings, run them in one TaskGroup, shut down in order."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Self
from urllib.parse import urlsplit

import asyncpg
import orjson
from aiohttp import web

from monitorme.adapters import partitions
from monitorme.adapters.fhir_upload import SnapshotUploader
from monitorme.adapters.migrations import apply_migrations
from monitorme.adapters.mqtt_alerts import MqttAlertPublisher
from monitorme.adapters.mqtt_source import MqttSettings, MqttSource
from monitorme.adapters.pg_reader import PgReader, create_pool
from monitorme.adapters.pg_writer import PgWriter, WriterConfig
from monitorme.adapters.spool import SpoolBusy
from monitorme.config import Settings, load_pipelines, load_rules
from monitorme.core.alerts import AlarmPolicy, Alert, Priority
from monitorme.core.decode import DecodeLimits
from monitorme.core.engine import Engine, EngineConfig
from monitorme.core.model import AuditEntry, Outputs, Reading
from monitorme.core.rules import validate_overrides
from monitorme.errors import ConfigError, StoreError
from monitorme.metrics import Metrics
from monitorme.runtime.lease import LeaseLost, WardLease
from monitorme.runtime.processor import Processor
from monitorme.web.app import create_app
from monitorme.web.auth import Principal, TokenBook
from monitorme.web.hub import WARD, StationHub, reading_value

log = logging.getLogger(__name__)
_HOUR_S = 3600
_SHUTDOWN_DEADLINE_S = 20.0
_START_REPLAY_BUDGET_S = 10.0


def open_writer(s: Settings, metrics: Metrics, on_durable: Callable[[list[object]], None] = lambda _a: None,
                ) -> PgWriter:
    """The ward's writer, owning the ward's spool directory (``spool.dir``) if there is one."""
    try:
        return PgWriter(
            WriterConfig(ward=s.ward, dsn=s.database_url, batch_rows=s.database_batch_rows,
                         flush_ms=s.database_flush_ms, spool_dir=s.spool_path, spool_max_bytes=s.spool_max_bytes),
            metrics, on_durable=on_durable,
        )
    except SpoolBusy as exc:
        raise ConfigError("spool.dir", str(exc)) from None
    except OSError as exc:
        raise ConfigError("spool.dir", f"cannot use {s.spool_path}: {exc.strerror}") from None


async def replay_stranded_spool(settings: Settings, stop: asyncio.Event, retry_s: float = 5.0) -> None:
    """While this daemon waits as a standby, write what its spool still holds for the ward.

    A daemon that spooled during a database outage and then lost the ward to another one (or was
    stopped before the database came back) would otherwise keep acknowledged readings on its
    disk until it happens to become active again. Writes are idempotent for readings
    (ON CONFLICT DO NOTHING). Skipped while another process on this host owns the spool.
    """
    if settings.spool_path is None or not settings.spool_path.is_dir():
        return
    while not stop.is_set():
        try:
            writer = open_writer(settings, Metrics())
        except ConfigError as exc:
            log.info("standby_spool_skipped", extra={"reason": exc.problem})
            return
        try:
            if writer.spool is None or not writer.spool.batches:
                return
            log.warning("standby_spool_replay", extra={"batches": writer.spool.batches, "bytes": writer.spool.bytes})
            if await writer.replay_spool():
                return
        finally:
            await writer.aclose()
        try:
            async with asyncio.timeout(retry_s):
                await stop.wait()
        except TimeoutError:
            pass


async def check_reachable(settings: Settings) -> None:
    """Fail at start, with the key named, when the broker or database cannot be reached."""
    from monitorme.adapters.mqtt_source import parse_mqtt_url

    broker = parse_mqtt_url(settings.mqtt_url)
    try:
        async with asyncio.timeout(5):
            _reader, writer = await asyncio.open_connection(broker.host, broker.port)
            writer.close()
    except (OSError, TimeoutError) as exc:
        raise ConfigError("mqtt.url", f"cannot reach {broker.host}:{broker.port}: {exc or 'timeout'}") from None
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=5)
        await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, socket.gaierror) as exc:
        where = urlsplit(settings.database_url).hostname or "local socket"
        raise ConfigError("database.url", f"cannot connect to {where}: {exc}") from None


class Daemon:
    """One ward's daemon. ``async with Daemon(settings) as d: await d.run_until(stop)``."""

    def __init__(self, settings: Settings, *, insecure_no_auth: bool = False) -> None:
        self.settings = settings
        self.registry = load_pipelines(settings.pipelines_dir or None)
        self.rules = load_rules(self.registry, settings.rules_dir or None)
        if settings.http_tokens:
            self.tokens: TokenBook | None = TokenBook.from_file(settings.http_tokens)
        elif insecure_no_auth:
            self.tokens = None
        else:
            raise ConfigError("MONITORME_TOKENS", "no token file; give one, or --insecure-no-auth")
        self.metrics = Metrics()
        self._stack = AsyncExitStack()
        self.http_port = 0

    async def __aenter__(self) -> Self:
        try:
            return await self._start()
        except BaseException:
            await self._stack.aclose()  # what did start (pool, web runner) is closed again
            raise

    async def _start(self) -> Self:
        s = self.settings
        await check_reachable(s)
        try:
            applied = await apply_migrations(s.database_url)
        except StoreError as exc:
            raise ConfigError("database.url", str(exc)) from None
        if applied:
            log.info("migrations_applied", extra={"versions": applied})
        self.pool = await create_pool(s.database_url)
        self._db_answers = True  # it just did; _watch_database keeps this true
        self._stack.push_async_callback(self._close_pool)
        self.reader = PgReader(self.pool, s.ward, self.registry)
        self.source = MqttSource(
            MqttSettings(url=s.mqtt_url, ward=s.ward, client_id=s.client_id, protocol=s.mqtt_protocol,
                         qos=s.mqtt_qos, receive_maximum=s.mqtt_receive_maximum,
                         session_expiry_s=s.mqtt_session_expiry_s, ca_file=s.mqtt_ca or None,
                         cert_file=s.mqtt_cert or None, key_file=s.mqtt_key or None),
            self.metrics,
        )
        self.writer = open_writer(s, self.metrics, on_durable=self.source.ack)
        self._stack.push_async_callback(self.writer.aclose)
        # What an earlier run spooled during an outage goes in first, so that the patients,
        # open alerts and windows restored below include it; a large spool is not allowed to
        # hold alerting back for long (the rest is written before new batches once running).
        await self.writer.replay_spool(budget_s=_START_REPLAY_BUDGET_S)
        patients = await self.reader.patients()
        async with self.pool.acquire() as conn:
            await self._upkeep(conn)
        policy = AlarmPolicy(
            escalate_after_s={Priority.HIGH: (float(s.alarms_escalate_high_s), 2.0 * s.alarms_escalate_high_s),
                              Priority.MEDIUM: (float(s.alarms_escalate_medium_s),), Priority.LOW: ()},
            remind_every_s=float(s.alarms_remind_s),
        )
        self.engine = Engine(
            EngineConfig(s.ward, DecodeLimits(s.ingest_max_payload_bytes, s.ingest_max_future_s * 1000,
                                              s.database_retention_hours * _HOUR_S * 1000),
                         lateness_ms=s.analysis_lateness_s * 1000, policy=policy),
            self.registry, [p.patient for p in patients], self.rules,
        )
        # Warm start: stations, thresholds and open alerts, so nothing open is raised twice.
        for p in patients:
            self.engine.set_patient(p.patient, p.station, self._valid_thresholds(p.patient, p.thresholds))
        for alert in await self.reader.open_alerts():
            self.engine.analyzer.restore_alert(alert)
        warm_alerts = await self._restore_windows()
        self.alert_publisher = MqttAlertPublisher(self.source, s.ward, self.metrics)
        self.hub = StationHub(self.metrics, self.patient_station)
        self.uploader = (SnapshotUploader(self.pool, s.ward, s.mymedicaldata_url, s.mymedicaldata_token,
                                          s.mymedicaldata_ca or None, self.metrics)
                         if s.mymedicaldata_url else None)
        self.processor = Processor(self.source, self.engine, self.writer, self.metrics, self.dispatch,
                                   batch_max=s.ingest_batch_max)
        if warm_alerts:  # decided before the restart but never stored: stored and sent now
            self.dispatch(Outputs(alerts=warm_alerts), [])
        app = create_app(self.reader, self.metrics, self.tokens, self.readiness, self,
                         auth_failures_per_minute=s.http_auth_failures_per_minute)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._stack.push_async_callback(self._runner.cleanup)
        self._stack.push_async_callback(self.hub.aclose)  # sockets close (1001) before the server goes
        host, port = s.http_host_port
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError("http.listen", f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.http_port = self._runner.addresses[0][1] if self._runner.addresses else port
        log.info("http_listening", extra={"host": host, "port": self.http_port})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _restore_windows(self) -> list[Alert]:
        """Replay the last ``analysis.restore_s`` of stored scalar readings into the windows and rule
        timers, so a condition that had been building up does not start from zero after a restart.

        ECG chunks are left out (their detector settles within seconds, and analysing them is the
        slow part); so are trends over longer windows than this, which refill as readings arrive.
        """
        restore_ms = self.settings.analysis_restore_s * 1000
        if not restore_ms:
            return []
        started = time.monotonic()
        now = _now_ms()
        readings: list[Reading] = []
        async for chunk in self.reader.iter_readings(now - restore_ms, now, waveforms=False):
            readings.extend(chunk)
        out = self.engine.warm_up(readings, now)
        log.info("windows_restored", extra={"readings": len(readings), "alerts_not_yet_stored": len(out.alerts),
                                            "seconds": round(time.monotonic() - started, 2)})
        return out.alerts

    async def _close_pool(self) -> None:
        try:
            async with asyncio.timeout(5):
                await self.pool.close()
        except TimeoutError:
            self.pool.terminate()

    def _valid_thresholds(self, patient: str, raw: dict[str, object]) -> dict[str, dict[str, object]] | None:
        try:
            return validate_overrides(self.rules.rules, raw)
        except ConfigError as exc:  # rules changed since they were stored: keep the defaults, say so
            log.error("stored_thresholds_invalid", extra={"patient": patient, "problem": str(exc)})
            return None

    # -- the one place outputs fan out to the sinks ---------------------------------
    def dispatch(self, out: Outputs, acks: list[object]) -> None:
        """Alerts go to MQTT at once (they do not wait for the database); everything is stored."""
        if out.alerts:
            self.alert_publisher.put(out.alerts)
            for alert in out.alerts:
                self.metrics.inc("monitorme_alert_changes_total", priority=alert.priority.value,
                                 state=alert.state.value)
        self.hub.publish(out.readings, out.alerts, out.scores)
        for fault in out.faults:
            self.metrics.inc("monitorme_analysis_faults_total", vital=fault.vital)
            log.error("analysis_fault", extra={"patient": fault.patient, "vital": fault.vital, "error": fault.error})
        self.writer.submit(out, acks)

    # -- commands from the web layer (same loop, no locks) ---------------------------
    def acknowledge(self, alert_id: str, by: str) -> Alert | None:
        alert, out = self.engine.acknowledge(alert_id, by)
        self.dispatch(out, [])
        return alert

    def open_alerts(self, patient: str | None = None) -> list[Alert]:
        return self.engine.analyzer.open_alerts(patient)

    def patient_station(self, patient: str) -> str | None:
        ps = self.engine.analyzer.patients.get(patient)
        return ps.station if ps is not None else None

    def patient_status(self, patient: str) -> dict[str, Any] | None:
        ps = self.engine.analyzer.patients.get(patient)
        return ps.status() if ps is not None else None

    def audit(self, who: Principal, action: str, patient: str | None = None, alert_id: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        """Record who did what; written with the next batch (never the token itself)."""
        entry = AuditEntry(_now_ms(), who.name, who.role.value, action, patient, alert_id,
                           orjson.dumps(detail or {}).decode())
        self.dispatch(Outputs(audit=[entry]), [])

    def snapshots_enabled(self) -> bool:
        return self.uploader is not None

    def snapshot_queued(self) -> None:
        if self.uploader is not None:
            self.uploader.wake.set()

    def discharged(self, patient: str) -> None:
        self.dispatch(self.engine.discharge(patient, _now_ms()), [])

    def station_hello(self, station: str) -> dict[str, Any]:
        """The ``hello`` frame: every patient of the station with latest vitals, NEWS2 and open alerts."""
        patients = []
        for ps in sorted(self.engine.analyzer.patients.values(), key=lambda p: p.patient):
            if station == WARD:  # the clinicians' feed: every patient with something open
                if ps.open_alerts:
                    patients.append({"patient": ps.patient, "station": ps.station, "latest": {},
                                     "alerts": [a.as_json() for a in ps.open_alerts.values()], **ps.status()})
                continue
            if ps.station != station:
                continue
            latest = {v: {"ts": ts, "value": reading_value(value)} for v, (ts, value) in ps.latest.items()}
            patients.append({"patient": ps.patient, "latest": latest,
                             "alerts": [a.as_json() for a in ps.open_alerts.values()], **ps.status()})
        return {"type": "hello", "station": station, "patients": patients, "feed": self.readiness()}

    async def serve_station(self, request: web.Request, station: str, who: Principal) -> web.StreamResponse:
        def on_ack(alert_id: str) -> None:
            alert = next((a for a in self.open_alerts() if a.id == alert_id), None)
            if alert is None or not who.may_see_station(self.patient_station(alert.patient)):
                return  # not this screen's patient, or nothing open: ignored
            if self.acknowledge(alert_id, who.name) is not None:
                self.audit(who, "acknowledge", alert.patient, alert_id, {"rule": alert.rule, "via": "station"})

        return await self.hub.serve(request, station, who.name, self.station_hello(station), on_ack)

    def validate_thresholds(self, raw: dict[str, object]) -> dict[str, dict[str, object]]:
        return validate_overrides(self.rules.rules, raw)

    def patient_changed(self, patient: str, station: str | None, thresholds: dict[str, object]) -> None:
        self.engine.set_patient(patient, station, validate_overrides(self.rules.rules, thresholds))

    def reload_rules(self) -> None:
        """SIGHUP: re-read rules/; a bad file keeps the rules in force (and says why)."""
        try:
            rules = load_rules(self.registry, self.settings.rules_dir or None)
        except ConfigError as exc:
            log.error("rules_reload_failed", extra={"problem": str(exc)})
            self.metrics.inc("monitorme_rules_reload_failures_total")
            return
        self.rules = rules
        self.engine.reload_rules(rules)
        log.info("rules_reloaded", extra={"rules": len(rules.rules)})

    def readiness(self) -> dict[str, bool]:
        """What /readyz reports: the broker connection, and a database that answers and takes our writes."""
        return {"broker": self.source.connected, "database": self._db_answers and not self.writer.failing}

    async def _watch_database(self) -> None:
        """Ping PostgreSQL every 2 s, so readiness is true when idle and false soon after an outage starts."""
        while True:
            try:
                async with asyncio.timeout(2):
                    await self.pool.fetchval("SELECT 1")
                self._db_answers = True
            except Exception as exc:  # a probe: any failure means "not answering", never a crash
                if self._db_answers:
                    log.warning("database_not_answering", extra={"error": repr(exc)[:300]})
                self._db_answers = False
            await asyncio.sleep(2)

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop``; then drain in data order: intake, writes and acks, broker, web."""
        intake_stop = asyncio.Event()
        writer_stop = asyncio.Event()
        source_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.source.run(source_stop), name="monitorme.mqtt_source")
            processing = tg.create_task(self.processor.run(intake_stop), name="monitorme.processor")
            writing = tg.create_task(self.writer.run(writer_stop), name="monitorme.pg_writer")
            publishing = tg.create_task(self.alert_publisher.run(source_stop), name="monitorme.mqtt_alerts")
            upkeep = tg.create_task(self._retention(), name="monitorme.retention")
            ticking = tg.create_task(self._ticker(), name="monitorme.ticker")
            watching = tg.create_task(self._watch_database(), name="monitorme.db_watch")
            uploading = (tg.create_task(self.uploader.run(), name="monitorme.fhir_upload")
                         if self.uploader is not None else None)
            await stop.wait()
            log.info("shutdown_started")
            upkeep.cancel()
            ticking.cancel()
            watching.cancel()
            if uploading is not None:
                uploading.cancel()  # the outbox is in PostgreSQL: a pending upload resumes after restart
            intake_stop.set()
            self.source.arrived.set()
            try:
                async with asyncio.timeout(_SHUTDOWN_DEADLINE_S):
                    await processing
                    writer_stop.set()
                    await writing
                    if self.source.connected:
                        try:
                            async with asyncio.timeout(5):
                                await self.alert_publisher.drained()
                        except TimeoutError:  # alerts are also stored; the broker may be gone
                            log.warning("alerts_not_all_published", extra={"pending": self.alert_publisher.pending})
                    await self.source.drain_acks()
            except TimeoutError:
                log.error("shutdown_deadline_passed", extra={"pending_rows": self.writer.pending_rows})
                processing.cancel()
                writing.cancel()
            source_stop.set()
            await publishing
        log.info("shutdown_done", extra={"stored": int(self.metrics.total("monitorme_stored_total"))})

    async def _ticker(self) -> None:
        """Once a second: wall-clock rules (no data), escalation and reminders; the feed's state to screens."""
        told = self.readiness()
        while True:
            await asyncio.sleep(1.0)
            self.dispatch(self.engine.tick(_now_ms()), [])
            now = self.readiness()
            if now != told:  # screens say so plainly when the broker (the readings) or the database is away
                told = now
                self.hub.status(self.feed_status())
                if all(now.values()):
                    log.info("feed_status", extra=now)
                else:
                    log.warning("feed_status", extra=now)

    def feed_status(self) -> dict[str, Any]:
        """What a screen shows about the feed: readings arrive (broker), history is kept (database)."""
        return {**self.readiness(), "since": _now_ms()}

    async def _upkeep(self, conn: asyncpg.Connection) -> None:
        """Partitions ahead, expired ones dropped, old dead letters pruned."""
        s = self.settings
        now = _now_ms()
        await partitions.upkeep(conn, now, s.database_retention_hours * _HOUR_S * 1000,
                                s.database_partitions_ahead_hours)
        if s.database_dead_letter_retention_hours:
            keep_ms = s.database_dead_letter_retention_hours * _HOUR_S * 1000
            await partitions.prune_dead_letters(conn, s.ward, now, keep_ms)

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(300)  # hourly partitions: a few passes an hour keep them ahead
            try:
                async with self.pool.acquire(timeout=10) as conn:
                    await self._upkeep(conn)
            except Exception as exc:  # upkeep must never take the daemon (and its alerts) down with it
                log.warning("retention_failed", extra={"error": repr(exc)[:300]})


def _now_ms() -> int:
    return int(time.time() * 1000)


@asynccontextmanager
async def standby_endpoint(settings: Settings) -> AsyncIterator[None]:
    """While waiting for the ward: /healthz says alive (standby), /readyz and /servingz 503, nothing else.

    So probes and supervisors see a healthy standby that must not get traffic, and the port is
    handed to the full server the moment this daemon takes over.
    """
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": "standby"})

    async def readyz(_request: web.Request) -> web.Response:
        return web.json_response({"ready": False, "standby": True}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/servingz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = settings.http_host_port
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:  # the port is taken: wait without it rather than not at all
        log.warning("standby_endpoint_unavailable", extra={"error": repr(exc)})
    try:
        yield
    finally:
        await runner.cleanup()


async def run_forever(settings: Settings, *, insecure_no_auth: bool = False,
                      stop: asyncio.Event | None = None) -> None:
    """``monitorme run``: until SIGTERM/SIGINT (or ``stop``, then no signal is touched), then a graceful shutdown."""
    loop = asyncio.get_running_loop()
    signals = stop is None
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(settings, insecure_no_auth=insecure_no_auth)  # bad rules, pipelines or tokens: exit 2 now
    await check_reachable(settings)  # so does a broker or database that is not there at all
    lease = WardLease(settings.database_url, settings.ward)
    async with standby_endpoint(settings):  # a hot standby waits here while another daemon has the ward
        acquired_or_stopped = asyncio.Event()
        replaying = asyncio.ensure_future(replay_stranded_spool(settings, acquired_or_stopped))
        try:
            acquired = await lease.acquire(stop)
        finally:
            acquired_or_stopped.set()
            await replaying  # gives the spool up before the daemon takes it
    if not acquired:
        return
    try:
        async with daemon:
            if signals:
                loop.add_signal_handler(signal.SIGHUP, daemon.reload_rules)
            keeper = asyncio.ensure_future(lease.keep(stop))
            lost = asyncio.ensure_future(lease.lost.wait())
            lost.add_done_callback(lambda _f: stop.set())
            try:
                await daemon.run_until(stop)
            finally:
                keeper.cancel()
                lost.cancel()
    finally:
        await lease.release()
    if lease.lost.is_set():
        raise LeaseLost(f"ward {settings.ward} was taken over by another daemon")


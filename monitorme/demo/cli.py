"""The `demo` subcommand: PostgreSQL, a broker, the daemon and a simulated ward on one machine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

from monitorme.config import Settings, load_settings, parse_listen
from monitorme.demo.services import (
    EmbeddedBroker,
    EmbeddedPostgres,
    MosquittoBroker,
    free_port,
    with_database,
)
from monitorme.demo.ward import (
    Assignment,
    DemoTokens,
    assignments,
    backfill_s,
    demo_scenario,
    make_tokens,
    simulated_ward,
    write_token_file,
)
from monitorme.logs import setup_logging

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HTTP: Final = "127.0.0.1:8080"
DATABASE: Final = "monitorme"
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
_REST_TIMEOUT_S: Final = 10.0
# How long the simulator waits for the broker's last acknowledgements when stopping.
_SIM_ACK_TIMEOUT_S: Final = 10.0
_SUBSCRIBE_TIMEOUT_S: Final = 60.0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `demo` on an argparse subparsers object (sets `func=run` as a default)."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole system with a simulated ward on this machine",
        description=(
            "Start an embedded PostgreSQL, an MQTT broker, the daemon and a simulated ward; "
            "print the station URLs and API tokens; run until Ctrl-C. Listens on "
            f"$MONITORME_HTTP (default {DEFAULT_HTTP}, or a free port when that one is busy)."
        ),
    )
    p.add_argument("--patients", type=_positive_int, default=20, help="patients (default 20)")
    p.add_argument("--ward", default="demo", help="ward id (default demo)")
    p.add_argument("--stations", type=_positive_int, default=2, help="stations s1..sN (default 2)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the database (and the token file) here between runs "
        "(default: a temp dir removed at exit)",
    )
    p.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="multiple of real time (default 1.0); above 1 the simulated clock starts in the "
        "past and runs fast until it reaches the wall clock",
    )
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the demo until SIGINT/SIGTERM, then stop everything it started.

    Returns:
        0 after a clean stop, 1 when the daemon or the simulator failed.

    Raises:
        ConfigError: bad ``MONITORME_*`` settings or an HTTP address that is taken.
    """
    setup_logging("console", "INFO")
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # logs every pg_ctl run at INFO
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Outside the event loop (starting and stopping services) a signal only asks to stop;
        # the sequence finishes in order so that no process is left behind.
        if not stop_requested.is_set():
            log.info("demo_stop_requested", extra={"signal": signal.Signals(signum).name})
        stop_requested.set()

    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        with contextlib.ExitStack() as stack:
            return _run_with(args, stack, stop_requested, on_signal)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_with(
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    stop_requested: threading.Event,
    on_signal: Callable[[int, FrameType | None], None],
) -> int:
    # Check the user's MONITORME_* settings (and --ward) before starting anything.
    listen = os.environ.get("MONITORME_HTTP") or _default_listen()
    _settings(
        ward=args.ward,
        mqtt_url="mqtt://127.0.0.1:1883",
        mqtt_protocol=5,
        database_url=f"postgresql://postgres@127.0.0.1:5432/{DATABASE}",
        tokens=None,
        listen=listen,
        env=os.environ,
    )
    data_dir = _data_dir(args.data_dir, stack)
    if stop_requested.is_set():
        return 0
    pg = stack.enter_context(EmbeddedPostgres(data_dir / "pgdata"))
    if stop_requested.is_set():
        return 0
    broker: MosquittoBroker | EmbeddedBroker = (
        MosquittoBroker() if MosquittoBroker.available() else EmbeddedBroker()
    )
    stack.enter_context(broker)
    if stop_requested.is_set():
        return 0
    tokens = make_tokens(args.stations)
    token_file = write_token_file(data_dir / "tokens.toml", tokens)
    settings = _settings(
        ward=args.ward,
        mqtt_url=broker.url,
        mqtt_protocol=5 if isinstance(broker, MosquittoBroker) else 4,  # amqtt: MQTT 3.1.1 only
        database_url=with_database(pg.dsn, DATABASE),
        tokens=token_file,
        listen=listen,
        env=os.environ,
    )
    demo = _Demo(
        settings=settings,
        admin_dsn=pg.dsn,
        tokens=tokens,
        plan=assignments(args.patients, args.stations),
        patients=args.patients,
        speed=args.speed,
        data_dir=data_dir,
        kept=args.data_dir is not None,
        broker_name="mosquitto" if isinstance(broker, MosquittoBroker) else "amqtt (embedded)",
        stop_requested=stop_requested,
    )
    try:
        return _run_async(demo.serve())
    finally:
        # The loop restored the default handlers on closing: keep stopping in order.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, on_signal)
        log.info("demo_stopping_services")


def _data_dir(given: Path | None, stack: contextlib.ExitStack) -> Path:
    if given is not None:
        path = given.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="monitorme-demo-"))
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path


def _settings(
    *,
    ward: str,
    mqtt_url: str,
    mqtt_protocol: int,
    database_url: str,
    tokens: Path | None,
    listen: str,
    env: Mapping[str, str],
) -> Settings:
    """The daemon's settings: the user's ``MONITORME_*`` env with the demo's services swapped in."""
    merged = dict(env)
    merged.update(
        {
            "MONITORME_WARD": ward,
            "MONITORME_MQTT_URL": mqtt_url,
            "MONITORME_DATABASE_URL": database_url,
            "MONITORME_HTTP": listen,
        }
    )
    merged.pop("MONITORME_TOKENS", None)
    if tokens is not None:
        merged["MONITORME_TOKENS"] = str(tokens)
    return dataclasses.replace(load_settings(None, merged), mqtt_protocol=mqtt_protocol)


def _default_listen() -> str:
    """``127.0.0.1:8080``, or a free port on 127.0.0.1 when 8080 is taken."""
    host, port = parse_listen(DEFAULT_HTTP)
    if _can_bind(host, port):
        return DEFAULT_HTTP
    chosen = free_port()
    log.info("demo_http_port_busy", extra={"busy": port, "chosen": chosen})
    return f"{host}:{chosen}"


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As aiohttp binds: a port lingering in TIME_WAIT is usable, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


def _url_host(host: str) -> str:
    """A host to put in URLs for a listen address (wildcards become loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclasses.dataclass(slots=True)
class _Demo:
    """The part of a demo run that lives in the event loop: daemon, assignments, simulator."""

    settings: Settings
    admin_dsn: str
    tokens: DemoTokens
    plan: list[Assignment]
    patients: int
    speed: float
    data_dir: Path
    kept: bool
    broker_name: str
    stop_requested: threading.Event

    async def serve(self) -> int:
        from monitorme.runtime.app import Daemon

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        if self.stop_requested.is_set():
            return 0
        await _ensure_database(self.admin_dsn, DATABASE)
        async with Daemon(self.settings) as daemon:
            daemon_stop = asyncio.Event()
            daemon_task = asyncio.create_task(daemon.run_until(daemon_stop), name="demo.daemon")
            sim_stop = threading.Event()
            sim_task: asyncio.Task[Any] | None = None
            code = 0
            try:
                base = f"http://{_url_host(self.settings.http_host_port[0])}:{daemon.http_port}"
                if not stop.is_set():
                    await self._assign(base)
                    # Readings published before the daemon's first subscription would be lost.
                    await _wait_subscribed(daemon.readiness, stop, daemon_task)
                if not stop.is_set() and not daemon_task.done():
                    sim_task = asyncio.create_task(
                        asyncio.to_thread(self._simulate, sim_stop), name="demo.simulator"
                    )
                    print(self._banner(base), flush=True)
                    stop_task = asyncio.create_task(stop.wait(), name="demo.stop")
                    await asyncio.wait(
                        {stop_task, daemon_task, sim_task}, return_when=asyncio.FIRST_COMPLETED
                    )
                    stop_task.cancel()
                if not stop.is_set():
                    log.error("demo_part_ended_early")
                    code = 1
            except Exception:
                log.exception("demo_failed")
                code = 1
            finally:
                log.info("demo_stopping")
                sim_stop.set()
                if sim_task is not None and not await _finished(sim_task, "simulator"):
                    code = 1
                daemon_stop.set()
                if not await _finished(daemon_task, "daemon"):
                    code = 1
        return code

    async def _assign(self, base: str) -> None:
        """Put every patient in its bed with ``PUT /api/patients/{p}`` (admin token)."""
        import aiohttp

        headers = {"Authorization": f"Bearer {self.tokens.admin}"}
        timeout = aiohttp.ClientTimeout(total=_REST_TIMEOUT_S)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            for a in self.plan:
                body = {"station": a.station, "bed": a.bed}
                async with session.put(f"{base}/api/patients/{a.patient}", json=body) as resp:
                    if resp.status != 200:
                        detail = (await resp.text())[:200]
                        raise RuntimeError(
                            f"PUT /api/patients/{a.patient} answered {resp.status}: {detail}"
                        )
        log.info("demo_patients_assigned", extra={"patients": len(self.plan)})

    def _simulate(self, stop: threading.Event) -> None:
        """Publish the ward's readings until ``stop`` (runs in a worker thread)."""
        from monitorme.sim.publisher import publish

        s = self.settings
        stats = publish(
            simulated_ward(s.ward, self.patients, self.speed, stop),
            s.mqtt_url,
            qos=1,
            speed=self.speed,
            client_id=f"monitorme-demo-sim-{os.getpid()}",
            ack_timeout_s=_SIM_ACK_TIMEOUT_S,
            stop=stop,
        )
        log.info(
            "demo_simulator_stopped",
            extra={"sent": stats.sent, "acked": stats.acked, "seconds": round(stats.seconds, 1)},
        )

    def _banner(self, base: str) -> str:
        clinician = self.tokens.clinician
        history = f"{base}/api/patients/p001/history"
        behind = backfill_s(self.speed)
        clock = (
            f"; simulated clock started {behind / 60:.0f} min ago" if behind > 0 else ""
        )
        lines = [
            "",
            f"MonitorMe demo is running: ward {self.settings.ward}, {self.patients} patients, "
            f"{len(self.tokens.stations)} stations, scenario {demo_scenario()} on p001, "
            f"speed {self.speed:g}x{clock}.",
            f"Broker {self.broker_name} at {self.settings.mqtt_url}; data in {self.data_dir} "
            f"({'kept' if self.kept else 'removed at exit'}).",
            "",
            "Station pages:",
            *(
                f"  {station}: {base}/stations/{station}?token={token}"
                for station, token in self.tokens.stations.items()
            ),
            "",
            "Clinician pages:",
            f"  ward alerts (phone): {base}/alerts?token={clinician}",
            f"  history of p001:     {base}/patients/p001?token={clinician}",
            "",
            "API tokens (send as 'Authorization: Bearer <token>'):",
            f"  clinician token: {clinician}",
            f"  admin token: {self.tokens.admin}",
            "",
            "Try:",
            f"  curl -H 'Authorization: Bearer {clinician}' '{base}/api/patients'",
            f"  curl -H 'Authorization: Bearer {clinician}' "
            f"'{history}?vital=heart_rate&max_points=200'",
            f"  curl -H 'Authorization: Bearer {clinician}' '{history}?vital=spo2&max_points=200'",
            "",
            "Press Ctrl-C to stop.",
        ]
        return "\n".join(lines)


async def _wait_subscribed(
    readiness: Callable[[], dict[str, bool]], stop: asyncio.Event, daemon_task: asyncio.Task[Any]
) -> None:
    """Wait until the daemon has subscribed to the broker (or stops, or a minute passes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SUBSCRIBE_TIMEOUT_S
    while not readiness()["broker"]:
        if stop.is_set() or daemon_task.done():
            return
        if loop.time() > deadline:
            log.warning("demo_daemon_not_subscribed", extra={"waited_s": _SUBSCRIBE_TIMEOUT_S})
            return
        await asyncio.sleep(0.05)


async def _finished(task: asyncio.Task[Any], name: str) -> bool:
    """Wait for ``task``; log and return False when it failed."""
    try:
        await task
    except Exception:
        log.exception("demo_part_failed", extra={"part": name})
        return False
    return True


async def _ensure_database(admin_dsn: str, name: str) -> None:
    """Create database ``name`` on the embedded server unless it exists (kept data dirs)."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
            log.info("demo_database_created", extra={"database": name})
    finally:
        await conn.close()

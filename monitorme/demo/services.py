"""Throw-away PostgreSQL servers and MQTT brokers for `monitorme demo` and the test suite."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = [
    "EmbeddedBroker",
    "EmbeddedPostgres",
    "MosquittoBroker",
    "ServiceError",
    "free_port",
    "port_open",
    "start_broker",
    "with_database",
]

_log = logging.getLogger(__name__)

_LOCALHOST = "127.0.0.1"
_SYSTEM_MQTT_PORT = 1883
# Debian installs the broker in sbin, which a non-root PATH often lacks.
_MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class ServiceError(RuntimeError):
    """A throw-away service did not start or stop as asked (machinery failure, not input)."""


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``.

    Args:
        host: address to connect to.
        port: TCP port.
        timeout_s: how long one connection attempt may take.

    Returns:
        True if a connection was accepted (it is closed again at once).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before returning, so another process may take it first; starters that
    pick their own port retry with a new one when binding fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointing at another database on the same server.

    Works for TCP DSNs and for unix-socket ones that carry ``?host=<dir>``.

    >>> with_database("postgresql://postgres@/postgres?host=/tmp/pg", "t_1")
    'postgresql://postgres@/t_1?host=/tmp/pg'
    """
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def _wait_until(ready: Callable[[], bool], alive: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``ready`` until it holds, ``alive`` fails or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return False
        time.sleep(0.02)
    return ready()


def _pid_alive(pid: int) -> bool:
    """Tell whether ``pid`` is a live process (a zombie left for init to reap counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # Field 3 of /proc/<pid>/stat is the state; containers' pid 1 may never reap orphans.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _signal_and_wait(pid: int, sig: signal.Signals, timeout_s: float) -> bool:
    """Send ``sig`` to ``pid`` and tell whether it is gone within ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    return _wait_until(lambda: not _pid_alive(pid), lambda: True, timeout_s)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EmbeddedPostgres:
    """A private PostgreSQL server from the `pgserver` wheel, reached over a unix socket.

    Example:
        with EmbeddedPostgres() as pg:
            conn = await asyncpg.connect(pg.dsn)
    """

    def __init__(self, datadir: Path | str | None = None, *, stop_timeout_s: float = 10.0) -> None:
        """Prepare (not start) a server.

        Args:
            datadir: PGDATA to use and keep; by default a temp dir removed again by ``stop()``.
            stop_timeout_s: how long ``stop()`` waits for the postmaster before killing it.
        """
        self._given_datadir = Path(datadir) if datadir is not None else None
        self._stop_timeout_s = stop_timeout_s
        self._tmpdir: Path | None = None
        self._datadir: Path | None = None
        self._server: Any = None
        self._dsn: str | None = None

    @property
    def datadir(self) -> Path:
        """PGDATA of the running server."""
        if self._datadir is None:
            raise ServiceError("EmbeddedPostgres is not started")
        return self._datadir

    @property
    def dsn(self) -> str:
        """An asyncpg DSN for database ``postgres`` as user ``postgres`` (trust auth)."""
        if self._dsn is None:
            raise ServiceError("EmbeddedPostgres is not started")
        return self._dsn

    def start(self) -> Self:
        """Start the server (initdb on first use); a no-op when it already runs."""
        if self._server is not None:
            return self
        if self._given_datadir is not None:
            datadir = self._given_datadir
        else:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="monitorme-pg-"))
            datadir = self._tmpdir / "pgdata"
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; pytest would make that an error.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server

            try:
                # As root, pgserver runs postgres as a 'pgserver' system user (created if missing).
                server: Any = get_server(datadir, cleanup_mode="stop")
            except BaseException:
                if self._tmpdir is not None:
                    shutil.rmtree(self._tmpdir, ignore_errors=True)
                    self._tmpdir = None
                raise
        info = server.get_postmaster_info()
        self._server = server
        self._datadir = Path(info.pgdata)
        if info.socket_dir is not None:
            # pgserver listens on a unix socket only; asyncpg takes its directory as ?host=.
            host = quote(str(info.socket_dir), safe="/")
            self._dsn = f"postgresql://postgres@/postgres?host={host}&port={info.port}"
        else:
            self._dsn = f"postgresql://postgres@{info.hostname}:{info.port}/postgres"
        _log.info("embedded_postgres_started", extra={"datadir": str(self._datadir)})
        return self

    def stop(self) -> None:
        """Stop the server and wait until no postgres process of it is left."""
        server, self._server, self._dsn = self._server, None, None
        if server is None:
            return
        pid: int | None = server.get_pid()
        try:
            server.cleanup()  # pg_ctl -w stop (fast mode)
        finally:
            # pgserver skips the stop while it counts other handles on this datadir: make sure.
            if pid is not None and _pid_alive(pid):
                _log.warning("embedded_postgres_still_running", extra={"pid": pid})
                if not _signal_and_wait(pid, signal.SIGINT, self._stop_timeout_s):  # fast shutdown
                    _signal_and_wait(pid, signal.SIGKILL, 5.0)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            self._datadir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(datadir={self._datadir}, running={self._server is not None})"


class MosquittoBroker:
    """A private `mosquitto` on a free 127.0.0.1 port, configured not to drop messages.

    Stock Mosquitto queues at most 1,000 messages per client and drops the rest (PERF.md), so
    this one has unlimited queues, persistence in its own temp dir and TCP_NODELAY.
    ``stop()``/``start()``/``restart()`` keep port and persistence; ``close()`` (or leaving the
    ``with`` block) also deletes the temp dir.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_config: Sequence[str] = (),
        max_inflight_messages: int = 1000,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        """Prepare (not start) a broker.

        Args:
            port: TCP port on 127.0.0.1; by default a free one.
            extra_config: more mosquitto.conf lines, appended (later lines win for global options).
            max_inflight_messages: QoS 1/2 messages sent to a client before its acks; 0 = no limit.
                The default is large enough not to throttle a subscriber and stays far below
                the 65,535 message ids a client can tell apart.
            start_timeout_s: how long ``start()`` waits for the port to accept connections.
            stop_timeout_s: how long ``stop()`` waits after SIGTERM before SIGKILL.
        """
        self._auto_port = port is None
        self._port = port if port is not None else free_port()
        self._extra_config = tuple(extra_config)
        self._max_inflight = max_inflight_messages
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._workdir = Path(tempfile.mkdtemp(prefix="monitorme-mosquitto-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @staticmethod
    def executable() -> str | None:
        """Path of the mosquitto binary, or None."""
        found = shutil.which("mosquitto")
        if found is not None:
            return found
        return next((p for p in _MOSQUITTO_FALLBACKS if os.access(p, os.X_OK)), None)

    @staticmethod
    def available() -> bool:
        """Tell whether a mosquitto binary is installed."""
        return MosquittoBroker.executable() is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://{_LOCALHOST}:{self._port}"

    @property
    def workdir(self) -> Path:
        """Temp dir holding the config, the log and the persistence database."""
        return self._workdir

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        data_dir = self.workdir / "data"
        lines = [
            f"listener {self._port} {_LOCALHOST}",
            "allow_anonymous true",
            # 0 = unlimited: stock 1,000 silently drops a stalled or restarting subscriber's queue.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            f"max_inflight_messages {self._max_inflight}",
            "max_inflight_bytes 0",
            # Keep QoS 0 readings for a persistent session too while the daemon restarts.
            "queue_qos0_messages true",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {data_dir}/",
            "persistence_file mosquitto.db",
            "autosave_interval 1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to user 'mosquitto', which cannot write our temp dir.
            lines.append(f"user {getpass.getuser()}")
        lines.extend(self._extra_config)
        return "\n".join(lines) + "\n"

    def start(self) -> Self:
        """Start mosquitto and wait until its port accepts connections.

        Raises:
            ServiceError: mosquitto is missing, exited, or did not listen in time.
        """
        if self.running:
            return self
        exe = self.executable()
        if exe is None:
            raise ServiceError("mosquitto not found on PATH (install the 'mosquitto' package)")
        # Someone may take a free_port() before mosquitto binds it: retry (first start only).
        attempts = 3 if self._auto_port and not self._started_once else 1
        for attempt in range(1, attempts + 1):
            try:
                self._spawn(exe)
            except ServiceError:
                if attempt == attempts:
                    raise
                self._port = free_port()
                continue
            break
        self._started_once = True
        atexit.register(self.stop)
        return self

    def _spawn(self, exe: str) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [exe, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a terminal's Ctrl-C must reach only us, so the broker is
                # still there while the daemon sends its last acknowledgements.
                start_new_session=True,
            )
        self._proc = proc
        if not _wait_until(
            lambda: port_open(_LOCALHOST, self._port, 0.2),
            lambda: proc.poll() is None,
            self._start_timeout_s,
        ):
            self._terminate(proc)
            self._proc = None
            raise ServiceError(
                f"mosquitto did not listen on {_LOCALHOST}:{self._port} within "
                f"{self._start_timeout_s} s (exit code {proc.returncode}); log tail:\n"
                + _log_tail(self.log_path)
            )
        _log.info("mosquitto_started", extra={"port": self._port, "pid": proc.pid})

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            # SIGTERM lets mosquitto write its persistence file before exiting.
            proc.terminate()
            try:
                proc.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                _log.warning("mosquitto_killed", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop mosquitto: SIGTERM, then SIGKILL after ``stop_timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._terminate(proc)
        atexit.unregister(self.stop)

    def kill(self) -> None:
        """SIGKILL mosquitto, as a crash would: only what autosave wrote (≤ 1 s old) survives."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        atexit.unregister(self.stop)

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence database."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and delete the temp dir."""
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MosquittoBroker(url={self.url!r}, running={self.running})"


def _make_accept_all_plugin() -> type:
    from amqtt.plugins.base import BaseAuthPlugin

    class AcceptAllAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
        """Let every client in without marking it anonymous.

        amqtt's AnonymousAuthPlugin flags each session anonymous, and amqtt then discards a
        disconnected anonymous session and its queued messages: no persistent sessions.
        """

        async def authenticate(self, *, session: Any) -> bool:
            return True

    AcceptAllAuthPlugin.__module__ = __name__
    return AcceptAllAuthPlugin


def __getattr__(name: str) -> Any:
    # amqtt loads plugins by dotted path; building the class on first lookup keeps amqtt out of
    # `import monitorme.demo.services`.
    if name == "AcceptAllAuthPlugin":
        cls = _make_accept_all_plugin()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EmbeddedBroker:
    """A pure-Python amqtt (MQTT 3.1.1) broker on a free 127.0.0.1 port, in its own thread and loop.

    Good for a 20-patient demo and for tests where mosquitto is missing (≈ 2k QoS 1 msg/s).
    Persistent sessions (clean_session False) keep QoS 1/2 messages while disconnected, in
    memory only.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self._auto_port = port is None
        self._port = port if port is not None else free_port()
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://{_LOCALHOST}:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Start the broker thread and wait until it listens.

        Raises:
            ServiceError: amqtt failed to start or did not listen in time.
        """
        if self.running:
            return self
        attempts = 3 if self._auto_port else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
            except ServiceError:
                if attempt == attempts:
                    raise
                self._port = free_port()
                continue
            break
        return self

    def _start_once(self) -> None:
        self._ready.clear()
        self._error = None
        thread = threading.Thread(target=self._run, name="monitorme.embedded_broker", daemon=True)
        self._thread = thread
        thread.start()
        if not self._ready.wait(self._start_timeout_s) or self._error is not None:
            error = self._error
            self.stop()
            raise ServiceError(
                f"amqtt broker did not start on port {self._port}: {error!r}"
            ) from error
        _log.info("embedded_broker_started", extra={"port": self._port})

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() through self._error
            if self._error is None:
                self._error = exc
            _log.debug("embedded_broker_failed", exc_info=True)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from amqtt.broker import Broker

        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{_LOCALHOST}:{self._port}"}},
            # Replaces amqtt's default plugins ($SYS publisher, packet logger, anonymous auth).
            "plugins": {f"{__name__}.AcceptAllAuthPlugin": {}},
        }
        broker = Broker(config)
        await broker.start()
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await broker.shutdown()

    def stop(self) -> None:
        """Shut the broker down and join its thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        self._thread = self._loop = self._stop_event = None
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        if thread is not None:
            thread.join(self._stop_timeout_s)
            if thread.is_alive():
                _log.warning("embedded_broker_stop_timeout", extra={"port": self._port})

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(url={self.url!r}, running={self.running})"


def start_broker(prefer_system: bool = False) -> contextlib.AbstractContextManager[str]:
    """Provide an MQTT URL for as long as the returned context is open.

    Args:
        prefer_system: use a broker already answering on 127.0.0.1:1883 if there is one.

    Returns:
        A context manager yielding the URL of, in order of preference, the system broker (if
        ``prefer_system``), a private no-loss MosquittoBroker, or an EmbeddedBroker.
    """
    return _broker_url(prefer_system)


@contextlib.contextmanager
def _broker_url(prefer_system: bool) -> Iterator[str]:
    if prefer_system and port_open(_LOCALHOST, _SYSTEM_MQTT_PORT):
        yield f"mqtt://{_LOCALHOST}:{_SYSTEM_MQTT_PORT}"
        return
    broker: MosquittoBroker | EmbeddedBroker = (
        MosquittoBroker() if MosquittoBroker.available() else EmbeddedBroker()
    )
    with broker:
        yield broker.url

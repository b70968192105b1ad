"""A live MQTT load generator: a ward's devices publishing in real time from separate processes.

Each worker process owns one paho-mqtt client (its own network thread via ``loop_start``, QoS 1,
at most 1,000 messages in flight, TCP_NODELAY) and a share of the patients. A pacing loop wakes
every few milliseconds and publishes everything that has come due since the last tick, so a slow
tick is caught up in one batch instead of drifting. Every payload carries ``ts`` = the wall clock
(epoch ms) at the moment it is published, so the daemon's ``monitorme_store_lag_seconds`` is
publish -> stored.

Device periods are CONTRACT.md's (``monitorme.sim.model.PERIODS_MS``) divided by ``speed``. Each
(patient, vital) gets a fixed random phase spread over its whole period, so the rate is steady
from the first second (no burst of hourly readings at start): 4.22 messages/s per patient at speed
1. Values come from ``monitorme.sim.model.generate_ward``: a few template patients are simulated
once at start (30 s of readings, ECG included) and each live patient replays one template's
values back and forth from its own starting point, so a message costs a dict lookup and one
``bytes %`` format, not a simulation step.

Usage::

    python -m bench.loadgen [--url mqtt://host:port] [--ward w1] [--patients 500] [--seconds 20]
                            [--speed 1] [--processes K] [--qos 1] [--first-patient 1] [--count]

Without ``--url`` a private Mosquitto (``MosquittoBroker``) is started for the run; ``--count``
also runs ``mosquitto_sub`` on the ward's topics and reports how many messages it received.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Event as MpEvent
from types import FrameType, TracebackType
from typing import Any, Final, Self

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from monitorme.sim.model import PERIODS_MS, VITALS, generate_ward
from monitorme.sim.publisher import parse_url

__all__ = ["MSG_PER_PATIENT_S", "LoadGenerator", "default_processes"]

# Messages per second one patient sends at speed 1 (CONTRACT.md periods): ≈ 4.22.
MSG_PER_PATIENT_S: Final = sum(1000.0 / p for p in PERIODS_MS.values())
MSG_S_PER_PROCESS: Final = 8_000.0  # what one worker is asked to carry before another is added
MAX_DEFAULT_PROCESSES: Final = 4
TICK_S: Final = 0.005  # pacing granularity
# QoS 1 messages published and not yet acknowledged, per worker, before it waits (far below the
# 65,535 message ids paho can tell apart). The worker enforces this itself and leaves paho's own
# limit off: paho's limit re-scans every outstanding message on each PUBACK, which measured here
# doubles the CPU per message (67 vs 35 µs at 7,000 msg/s).
MAX_INFLIGHT: Final = 1_000
TEMPLATES: Final = 16  # simulated template patients
TEMPLATE_S: Final = 30.0  # simulated seconds per template
READY_TIMEOUT_S: Final = 60.0
ACK_TIMEOUT_S: Final = 30.0


def default_processes(patients: int, speed: float = 1.0) -> int:
    """min(4, ceil(expected msg/s / 8,000)), at least 1 and at most one per patient.

    >>> default_processes(500), default_processes(5_000), default_processes(50_000)
    (1, 3, 4)
    """
    rate = patients * MSG_PER_PATIENT_S * speed
    return max(1, min(MAX_DEFAULT_PROCESSES, patients, math.ceil(rate / MSG_S_PER_PROCESS)))


@dataclass(frozen=True, slots=True)
class _WorkerArgs:
    index: int
    host: str
    port: int
    username: str | None
    password: str | None
    ward: str
    patients: tuple[int, ...]  # patient numbers (p{n:04d})
    speed: float
    qos: int
    seed: int


# -- values: a few template patients simulated once --------------------------------------------------
def _templates(seed: int) -> dict[str, list[list[bytes]]]:
    """Per vital, per template patient: the JSON of each value, in a back-and-forth cycle."""
    values: dict[str, list[list[bytes]]] = {v: [[] for _ in range(TEMPLATES)] for v in VITALS}
    start_ms = int(time.time() * 1000)
    for m in generate_ward("tpl", TEMPLATES, start_ms, TEMPLATE_S, seed=seed):
        index = int(m.patient[1:]) - 1
        values[m.vital][index].append(orjson.dumps(orjson.loads(m.payload)["value"]))
    for per_template in values.values():
        for i, seq in enumerate(per_template):
            # Forward then back (no jump from the last value to the first); never empty: every
            # device reports within the first 2 s of a simulated run.
            per_template[i] = seq + seq[-2:0:-1] if len(seq) > 2 else seq
    return values


class _Vital:
    """One vital's schedule in one worker: every patient's readings at a fixed phase of the period.

    Reading ``cycle`` of entry ``j`` is due ``offsets[j] + cycle * period`` seconds after the start.
    Entries are sorted by phase, so what is due is always a run starting at the cursor.
    """

    __slots__ = ("cycle", "devices", "j", "n", "offsets", "period", "phase", "seqs", "topics", "values")

    def __init__(self, vital: str, ward: str, patients: Sequence[int], speed: float,
                 templates: list[list[bytes]], rng_seed: int) -> None:
        rng = random.Random(f"{rng_seed}:{vital}")
        self.period = PERIODS_MS[vital] / 1000.0 / speed
        entries = []
        for n in patients:
            pid = f"p{n:04d}"
            cycle = templates[n % TEMPLATES]
            entries.append((rng.uniform(0.0, self.period), f"monitorme/{ward}/{pid}/{vital}",
                            f"{pid}-{vital}".encode(), cycle, rng.randrange(len(cycle))))
        entries.sort(key=lambda e: e[0])
        self.offsets = [e[0] for e in entries]
        self.topics = [e[1] for e in entries]
        self.devices = [e[2] for e in entries]
        self.values = [e[3] for e in entries]
        self.phase = [e[4] for e in entries]  # where in its template cycle each patient starts
        self.seqs = [0] * len(entries)
        self.n = len(entries)
        self.j = 0
        self.cycle = 0

    def next_due(self) -> float:
        return self.offsets[self.j] + self.cycle * self.period if self.n else math.inf


# -- the worker process ------------------------------------------------------------------------------
class _Acks:
    """Counts PUBACKs (or, at QoS 0, writes) from paho's network thread."""

    __slots__ = ("acked",)

    def __init__(self) -> None:
        self.acked = 0

    def on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _rc: ReasonCode, _p: Any) -> None:
        self.acked += 1  # only paho's network thread writes it


def _nodelay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _connect(a: _WorkerArgs, acks: _Acks) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"loadgen-{a.ward}-{a.index}-{os.getpid()}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.max_inflight_messages_set(0)  # unlimited in paho: the worker keeps <= MAX_INFLIGHT itself
    client.max_queued_messages_set(0)
    if a.username is not None:
        client.username_pw_set(a.username, a.password)
    connected = threading.Event()
    failure: list[str] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason_code: ReasonCode, _p: Any) -> None:
        if reason_code.is_failure:
            failure.append(str(reason_code))
        connected.set()

    client.on_connect = on_connect
    client.on_publish = acks.on_publish
    client.on_socket_open = _nodelay
    client.connect(a.host, a.port, keepalive=60)
    client.loop_start()
    if not connected.wait(30) or failure:
        client.loop_stop()
        raise ConnectionError(f"MQTT connect to {a.host}:{a.port} failed: {failure or 'no CONNACK in 30 s'}")
    return client


def _worker(a: _WorkerArgs, stop: MpEvent, out: MpQueue[tuple[str, int, Any]]) -> None:
    """Publish ``a.patients``' readings in real time until ``stop`` is set; report on ``out``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        templates = _templates(a.seed)
        schedule = [_Vital(v, a.ward, a.patients, a.speed, templates[v], a.seed) for v in VITALS]
        acks = _Acks()
        client = _connect(a, acks)
    except Exception as exc:
        out.put(("error", a.index, f"{type(exc).__name__}: {exc}"))
        return
    publish = client.publish
    qos = a.qos
    published = 0
    max_lag = 0.0
    lag_sum = 0.0
    ticks = 0
    waits = 0
    cpu0 = time.process_time()
    t0 = time.monotonic()
    ready = False
    try:
        while not stop.is_set():
            rel = tick = time.monotonic() - t0
            oldest = math.inf
            for s in schedule:
                if not s.n:
                    continue
                offsets, period, n = s.offsets, s.period, s.n
                j, cycle = s.j, s.cycle
                due = offsets[j] + cycle * period
                if due <= rel and due < oldest:
                    oldest = due
                while due <= rel:
                    s.seqs[j] += 1
                    seq = s.seqs[j]
                    vals = s.values[j]
                    value = vals[(s.phase[j] + seq) % len(vals)]
                    payload = b'{"ts":%d,"value":%b,"seq":%d,"device":"%b"}' % (
                        time.time_ns() // 1_000_000, value, seq, s.devices[j])
                    publish(s.topics[j], payload, qos)
                    published += 1
                    j += 1
                    if j == n:
                        j = 0
                        cycle += 1
                    due = offsets[j] + cycle * period
                s.j, s.cycle = j, cycle
            ticks += 1
            if oldest != math.inf:
                lag = time.monotonic() - t0 - oldest  # the oldest message of the tick, once sent
                lag_sum += lag
                max_lag = max(max_lag, lag)
            if not ready:
                out.put(("ready", a.index, None))
                ready = True
            # Back-pressure: at most MAX_INFLIGHT unacknowledged; waiting here shows up as lag.
            while published - acks.acked >= MAX_INFLIGHT and not stop.is_set():
                waits += 1
                time.sleep(0.001)
            # Sleep to the next tick, or longer when nothing is due before then.
            nxt = max(min(s.next_due() for s in schedule), tick + TICK_S)
            pause = nxt - (time.monotonic() - t0)
            if pause > 0:
                time.sleep(pause)
        seconds = time.monotonic() - t0
        behind = max(0.0, seconds - min(s.next_due() for s in schedule))  # still due, unsent, at stop
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while acks.acked < published and time.monotonic() < deadline:
            time.sleep(0.005)
        stats = {
            "published": published, "acked": acks.acked, "seconds": seconds, "lagging_s": max_lag,
            "lag_mean_s": lag_sum / ticks if ticks else 0.0, "behind_at_stop_s": behind,
            "ticks": ticks, "backpressure_waits": waits, "cpu_s": time.process_time() - cpu0,
            "patients": len(a.patients),
        }
        out.put(("done", a.index, stats))
    except Exception as exc:
        out.put(("error", a.index, f"{type(exc).__name__}: {exc}"))
    finally:
        client.disconnect()
        client.loop_stop()


# -- the parent's handle -------------------------------------------------------------------------------
class LoadGenerator:
    """A ward's devices publishing live from ``processes`` worker processes.

    >>> with LoadGenerator("mqtt://127.0.0.1:1883", "w1", 500) as gen:  # doctest: +SKIP
    ...     time.sleep(20)
    >>> gen.result["rate"]  # doctest: +SKIP
    2110.3
    """

    def __init__(self, broker_url: str, ward: str, patients: int, *, speed: float = 1.0,
                 processes: int | None = None, qos: int = 1, first_patient: int = 1, seed: int = 0) -> None:
        if patients < 1:
            raise ValueError(f"patients must be >= 1, got {patients}")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos}")
        self.broker = parse_url(broker_url)
        if self.broker.tls:
            raise ValueError("the load generator speaks plain mqtt:// only")
        self.ward = ward
        self.patients = patients
        self.speed = speed
        self.processes = processes if processes is not None else default_processes(patients, speed)
        if not 1 <= self.processes <= patients:
            raise ValueError(f"processes must be between 1 and {patients}, got {self.processes}")
        self.qos = qos
        self.first_patient = first_patient
        self.seed = seed
        self.result: dict[str, Any] = {}
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._out: MpQueue[tuple[str, int, Any]] = self._ctx.Queue()
        self._procs: list[SpawnProcess] = []
        self._stopped = False

    @property
    def expected_rate(self) -> float:
        """Messages per second the schedule asks for."""
        return self.patients * MSG_PER_PATIENT_S * self.speed

    @property
    def pids(self) -> list[int]:
        """The worker processes' pids (for CPU accounting)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def start(self) -> None:
        """Start the workers; return once every one is connected and has published its first tick."""
        if self._procs:
            raise RuntimeError("already started")
        numbers = list(range(self.first_patient, self.first_patient + self.patients))
        shares = [tuple(numbers[i::self.processes]) for i in range(self.processes)]
        for i, share in enumerate(shares):
            args = _WorkerArgs(i, self.broker.host, self.broker.port, self.broker.username, self.broker.password,
                               self.ward, share, self.speed, self.qos, self.seed)
            proc = self._ctx.Process(target=_worker, args=(args, self._stop, self._out),
                                     name=f"loadgen-{self.ward}-{i}", daemon=True)
            proc.start()
            self._procs.append(proc)
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while len(ready) < self.processes:
                try:
                    kind, index, detail = self._out.get(timeout=0.2)
                except queue.Empty:
                    dead = [p.name for p in self._procs if p.exitcode is not None]
                    if dead:
                        raise RuntimeError(f"load generator worker(s) died at start: {dead}") from None
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{len(ready)} of {self.processes} load generator workers ready "
                                           f"after {READY_TIMEOUT_S:g} s") from None
                    continue
                if kind == "error":
                    raise RuntimeError(f"load generator worker {index}: {detail}")
                ready.add(index)
        except BaseException:
            self._terminate()
            raise

    def stop(self) -> dict[str, Any]:
        """Stop publishing, wait for the acknowledgements; the totals (also kept in ``result``)."""
        if not self._procs or self._stopped:
            return self.result
        self._stopped = True
        self._stop.set()
        per: dict[int, dict[str, Any]] = {}
        errors: list[str] = []
        deadline = time.monotonic() + ACK_TIMEOUT_S + 15
        while len(per) + len(errors) < len(self._procs) and time.monotonic() < deadline:
            try:
                kind, index, detail = self._out.get(timeout=0.2)
            except queue.Empty:
                if all(p.exitcode is not None for p in self._procs) and self._out.empty():
                    break
                continue
            if kind == "done":
                per[index] = detail
            elif kind == "error":
                errors.append(f"worker {index}: {detail}")
        self._terminate()
        workers = [per[i] for i in sorted(per)]
        published = sum(w["published"] for w in workers)
        seconds = max((w["seconds"] for w in workers), default=0.0)
        self.result = {
            "published": published,
            "acked": sum(w["acked"] for w in workers),
            "seconds": round(seconds, 3),
            "rate": round(published / seconds, 1) if seconds else 0.0,
            "expected_rate": round(self.expected_rate, 1),
            "processes": len(self._procs),
            "lagging_s": round(max((w["lagging_s"] for w in workers), default=0.0), 4),
            "lag_mean_s": round(max((w["lag_mean_s"] for w in workers), default=0.0), 4),
            "behind_at_stop_s": round(max((w["behind_at_stop_s"] for w in workers), default=0.0), 4),
            "cpu_s": round(sum(w["cpu_s"] for w in workers), 3),
            "backpressure_waits": sum(w["backpressure_waits"] for w in workers),
            "workers": workers,
            "errors": errors + [f"worker {i}: no report" for i in range(len(self._procs)) if i not in per
                                and not any(e.startswith(f"worker {i}:") for e in errors)],
        }
        return self.result

    def _terminate(self) -> None:
        self._stop.set()
        for p in self._procs:
            p.join(5)
        for p in self._procs:
            if p.exitcode is None:
                p.terminate()
                p.join(5)
        self._out.cancel_join_thread()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# -- command line ----------------------------------------------------------------------------------------
class _Counter:
    """``mosquitto_sub`` on the ward's topics (QoS 1), counting the messages it prints."""

    def __init__(self, host: str, port: int, ward: str) -> None:
        exe = shutil.which("mosquitto_sub")
        if exe is None:
            raise RuntimeError("--count needs mosquitto_sub")
        self.count = 0
        self.proc = subprocess.Popen([exe, "-h", host, "-p", str(port), "-q", "1", "-t", f"monitorme/{ward}/#",
                                      "-F", "%p", "-N"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.3)  # subscribed before the first publish

    def _read(self) -> None:
        if self.proc.stdout is None:
            return
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            self.count += chunk.count(b'{"ts":')

    def close(self) -> int:
        if self.proc.poll() is not None:
            return self.count
        time.sleep(1.0)
        self.proc.send_signal(signal.SIGINT)  # exits normally, flushing its output
        self.proc.wait(5)
        self._thread.join(5)
        return self.count


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="broker (default: a private Mosquitto for the run)")
    parser.add_argument("--ward", default="w1")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--qos", type=int, default=1, choices=(0, 1))
    parser.add_argument("--first-patient", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", action="store_true", help="count what a mosquitto_sub receives")
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with &
    try:
        with contextlib.ExitStack() as stack:
            url = args.url
            if not url:
                from monitorme.demo.services import MosquittoBroker

                url = stack.enter_context(MosquittoBroker()).url
            counter = None
            if args.count:
                broker = parse_url(url)
                counter = _Counter(broker.host, broker.port, args.ward)
                stack.callback(counter.close)
            gen = LoadGenerator(url, args.ward, args.patients, speed=args.speed, processes=args.processes,
                                qos=args.qos, first_patient=args.first_patient, seed=args.seed)
            print(f"loadgen: {args.patients} patients, {gen.expected_rate:,.0f} msg/s expected, "
                  f"{gen.processes} process(es), broker {url}", file=sys.stderr, flush=True)
            stack.callback(gen.stop)
            gen.start()
            time.sleep(args.seconds)
            result = gen.stop()
            if counter is not None:
                result["received_by_mosquitto_sub"] = counter.close()
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

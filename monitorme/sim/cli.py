"""The `simulate` subcommand: generate a ward's readings and publish them to the broker."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from monitorme.sim.model import SCENARIOS, generate_ward
from monitorme.sim.publisher import publish

__all__ = ["DEFAULT_MQTT_URL", "add_parser", "run"]

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"

_Restore = Callable[[], None]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `simulate` on an argparse subparsers object (sets `func=run` as a default)."""
    p = subparsers.add_parser(
        "simulate",
        help="publish a simulated ward's vitals over MQTT",
        description="Publish realistic vitals for a ward of simulated patients. Scenarios act on patient p001.",
    )
    p.add_argument("--ward", required=True, help="ward id used in the topics")
    p.add_argument("--patients", type=_positive_int, default=20, help="patients (default 20)")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="multiple of real time; 0 publishes as fast as possible (default 1.0)",
    )
    p.add_argument("--scenario", choices=SCENARIOS, default="normal")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="event-time seconds to simulate (default: forever; required with --speed 0)",
    )
    p.add_argument("--start", type=int, default=None, help="event time of the start, epoch ms")
    p.add_argument("--seed", type=int, default=0, help="same seed, same readings (default 0)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument(
        "--url",
        default=None,
        help=f"broker URL (default $MONITORME_MQTT_URL, else {DEFAULT_MQTT_URL})",
    )
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Publish the simulated ward described by `args`; print one summary line.

    Returns:
        0 when every message was acknowledged, 1 when some were not or the broker was
        unreachable, 2 for contradictory options.
    """
    speed: float = args.speed
    duration: float | None = args.duration
    if speed < 0 or not math.isfinite(speed):
        print(f"simulate: --speed must be >= 0, got {speed}", file=sys.stderr)
        return 2
    if speed == 0 and duration is None:
        print("simulate: --duration is required with --speed 0", file=sys.stderr)
        return 2
    if duration is not None and not duration > 0:
        print(f"simulate: --duration must be > 0, got {duration}", file=sys.stderr)
        return 2
    url: str = args.url or os.environ.get("MONITORME_MQTT_URL") or DEFAULT_MQTT_URL
    start_ms: int = args.start if args.start is not None else time.time_ns() // 1_000_000

    # The generator is lazy, so an endless run streams with bounded memory and without the
    # seams (seq restarts, jumps in the random walks) that separate chunks would add.
    messages = generate_ward(
        args.ward,
        args.patients,
        start_ms,
        duration if duration is not None else math.inf,
        scenario=args.scenario,
        seed=args.seed,
    )
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    try:
        stats = publish(
            messages,
            url,
            qos=args.qos,
            speed=speed if speed > 0 else None,
            stop=stop,
        )
    except (OSError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    finally:
        restore()
    print(
        f"simulate: ward={args.ward} patients={args.patients} scenario={args.scenario} "
        f"sent={stats.sent} acked={stats.acked} in {stats.seconds:.1f} s "
        f"({stats.rate:.0f} msg/s){' (stopped)' if stop.is_set() else ''}"
    )
    return 0 if stats.acked == stats.sent else 1


def _stop_on_signals(stop: threading.Event) -> _Restore:
    """Make SIGINT/SIGTERM set `stop` (so the run ends cleanly); return a function undoing it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore

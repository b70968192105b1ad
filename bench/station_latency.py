"""Publish -> station screen latency at hospital load: 25 stations x 20 patients, one screen each.

    python -m bench.station_latency [--seconds 60] [--json bench/results/station_latency.json]

Now one step of bench.suite (``suite.live`` at 500 patients): the daemon (its own process) analyses
the whole ward published in real time by bench.loadgen's separate processes (≈ 2,110 msg/s). Every
patient is assigned to one of 25 stations (20 each), and one WebSocket screen per station is
connected. A probe patient per station gets a heart-rate reading 5 times a second; each is timed
from publish to the ``vitals`` frame that carries it on its station's screen (the hub coalesces
per 50 ms, so ~25 ms of the p50 is by design). Goal (issue 4): p99 ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from bench.ingest import _admin_dsn, _execute
from bench.suite import live
from monitorme.demo.services import MosquittoBroker, with_database


def run(seconds: float) -> dict[str, Any]:
    with MosquittoBroker() as broker, _admin_dsn() as admin:
        name = f"monitorme_bench_{secrets.token_hex(4)}"
        asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
        try:
            result = live(broker, with_database(admin, name), 500, seconds)
        finally:
            asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return {"stations": 25, "patients": 500, "seconds": seconds,
            "publish_to_screen_ms": result.get("publish_to_station_ms"),
            "daemon_cpu_share_of_one_core": result.get("cpu_share"), "daemon_exit_code": result.get("exit_code")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", default="bench/results/station_latency.json")
    args = parser.parse_args(argv)
    report = run(args.seconds)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if (report["publish_to_screen_ms"] or {}).get("p99") is not None else 1


if __name__ == "__main__":
    sys.exit(main())

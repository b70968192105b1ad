"""What acknowledging after commit costs: the end-to-end drain under different in-flight windows.

    python -m bench.ack_cost [--patients 500] [--seconds 20]

MonitorMe acknowledges a QoS 1 message only once the batch holding it is committed (or spooled),
so the broker may have at most Receive Maximum (MQTT 5) of our messages unacknowledged, and
Mosquitto at most ``max_inflight_messages``. A small window makes intake wait for commits; this
runs the same backlog drain (bench.ingest.monitorme_drain) with Receive Maximum 20, 100, 1,000
and 20,000 against a broker with ``max_inflight_messages`` 20 (Mosquitto's default), 1,000 and
unlimited, beside the bare wire client's drain (acknowledging on receipt) on the same broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from bench import ingest
from bench.ingest import Collected, _admin_dsn, _execute, _for_ward
from monitorme.demo.services import MosquittoBroker, with_database
from monitorme.sim.model import generate_ward


def run(patients: int, seconds: float) -> dict[str, Any]:
    start_ms = int(time.time() * 1000) - int(seconds * 1000) - 60_000
    base = list(generate_ward(ingest.BASE_WARD, patients, start_ms, seconds))
    rows: list[dict[str, Any]] = []
    with _admin_dsn() as admin:
        db = f"monitorme_bench_{secrets.token_hex(4)}"
        asyncio.run(_execute(admin, f'CREATE DATABASE "{db}"'))
        try:
            dsn = with_database(admin, db)
            for inflight in (20, 1000, 0):
                with MosquittoBroker(max_inflight_messages=inflight) as broker:
                    ward = f"wire-{secrets.token_hex(2)}"
                    bare = asyncio.run(ingest.wire_drain(broker.url, ward, _for_ward(base, ward),
                                                         collected=Collected()))
                    for rx in (20, 100, 1000, 20_000):
                        ward = f"ack-{secrets.token_hex(2)}"
                        result = ingest.monitorme_drain(broker.url, dsn, ward, _for_ward(base, ward), Collected(),
                                                        {"MONITORME_MQTT_RECEIVE_MAXIMUM": str(rx)})
                        row = {"broker_max_inflight": inflight or "unlimited", "receive_maximum": rx,
                               "monitorme_rows_per_s": round(result.drain.rate),
                               "bare_wire_msg_per_s": round(bare.rate),
                               "exit_code": result.exit_code}
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr)
        finally:
            asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    return {"patients": patients, "seconds": seconds, "messages": len(base), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", default="bench/results/ack_cost.json")
    args = parser.parse_args(argv)
    report = run(args.patients, args.seconds)
    print(f"{'broker max_inflight':>20} {'receive max':>12} {'MonitorMe rows/s':>17} {'bare wire msg/s':>16}")
    for r in report["rows"]:
        print(f"{r['broker_max_inflight']!s:>20} {r['receive_maximum']:>12} {r['monitorme_rows_per_s']:>17,} "
              f"{r['bare_wire_msg_per_s']:>16,}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

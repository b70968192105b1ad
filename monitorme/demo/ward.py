"""The demo ward's fixtures: fresh API tokens, station assignments and the paced simulator."""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from monitorme.sim.model import SCENARIOS, SimMessage, generate_ward, patient_ids

__all__ = [
    "MAX_BACKFILL_S",
    "MAX_LEAD_S",
    "Assignment",
    "DemoTokens",
    "assignments",
    "backfill_s",
    "demo_scenario",
    "make_tokens",
    "paced",
    "simulated_ward",
    "station_ids",
    "write_token_file",
]

#: Above real time the simulated clock starts this far in the past per unit of extra speed, so
#: it runs fast for about ten minutes before it reaches the wall clock.
CATCH_UP_S: Final = 600.0
#: ...but never further back than this: the daemon accepts readings up to 24 h old.
MAX_BACKFILL_S: Final = 20 * 3600.0
#: The simulated clock never runs further ahead of the wall clock than this (the daemon rejects
#: readings more than ``ingest.max_future_s``, 300 s by default, in the future).
MAX_LEAD_S: Final = 60.0
_PREFERRED_SCENARIO: Final = "deterioration"


@dataclass(frozen=True, slots=True)
class DemoTokens:
    """One run's API tokens: admin, clinician and one per station (station id -> token)."""

    admin: str
    clinician: str
    stations: dict[str, str]


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a patient lies: station and bed."""

    patient: str
    station: str
    bed: str


def station_ids(stations: int) -> list[str]:
    """Return the station ids ``s1`` .. ``sK``.

    >>> station_ids(2)
    ['s1', 's2']
    """
    return [f"s{i + 1}" for i in range(stations)]


def make_tokens(stations: int) -> DemoTokens:
    """Generate fresh random tokens (``secrets.token_urlsafe``) for one demo run."""
    return DemoTokens(
        admin=secrets.token_urlsafe(24),
        clinician=secrets.token_urlsafe(24),
        stations={s: secrets.token_urlsafe(24) for s in station_ids(stations)},
    )


def token_file_text(tokens: DemoTokens) -> str:
    """The token file (CONTRACT.md §1) for ``tokens``."""
    entries: list[tuple[str, str, str | None]] = [
        ("admin", tokens.admin, None),
        ("clinician", tokens.clinician, None),
    ]
    entries += [("station", token, station) for station, token in tokens.stations.items()]
    blocks = []
    for role, token, station in entries:
        lines = ["[[token]]", f"token = {json.dumps(token)}", f"role = {json.dumps(role)}"]
        if station is not None:
            lines.append(f"station = {json.dumps(station)}")
        blocks.append("\n".join(lines))
    header = "# Written by `monitorme demo`; new tokens on every run.\n\n"
    return header + "\n\n".join(blocks) + "\n"


def write_token_file(path: Path, tokens: DemoTokens) -> Path:
    """Write the token file readable by its owner only; return ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token_file_text(tokens))
    path.chmod(0o600)  # O_CREAT's mode does not apply to a file kept from an earlier run
    return path


def assignments(patients: int, stations: int) -> list[Assignment]:
    """Spread ``p001..`` round-robin over ``s1..sK``, beds numbered per station.

    >>> [(a.patient, a.station, a.bed) for a in assignments(3, 2)]
    [('p001', 's1', 'b01'), ('p002', 's2', 'b01'), ('p003', 's1', 'b02')]
    """
    sids = station_ids(stations)
    return [
        Assignment(pid, sids[i % stations], f"b{i // stations + 1:02d}")
        for i, pid in enumerate(patient_ids(patients))
    ]


def demo_scenario() -> str:
    """``deterioration`` (so something happens), or ``normal`` where the simulator lacks it."""
    return _PREFERRED_SCENARIO if _PREFERRED_SCENARIO in SCENARIOS else "normal"


def backfill_s(speed: float) -> float:
    """How far in the past the simulated clock starts at ``speed`` times real time.

    >>> backfill_s(1.0), backfill_s(5.0), backfill_s(1000.0)
    (0.0, 2400.0, 72000.0)
    """
    if speed <= 1.0:
        return 0.0
    return min((speed - 1.0) * CATCH_UP_S, MAX_BACKFILL_S)


def paced(
    messages: Iterable[SimMessage], stop: threading.Event, max_lead_s: float = MAX_LEAD_S
) -> Iterator[SimMessage]:
    """Pass ``messages`` on, holding each back until it is at most ``max_lead_s`` in the future.

    Ends early (without the held message) once ``stop`` is set.
    """
    max_lead_ms = max_lead_s * 1000.0
    for message in messages:
        if stop.is_set():
            return
        wait_ms = message.ts_ms - time.time() * 1000.0 - max_lead_ms
        if wait_ms > 0 and stop.wait(wait_ms / 1000.0):
            return
        yield message


def simulated_ward(
    ward: str, patients: int, speed: float, stop: threading.Event, *, seed: int = 0
) -> Iterator[SimMessage]:
    """An endless stream of the ward's readings for ``publish(..., speed=speed, stop=stop)``.

    At ``speed`` 1 the readings carry the wall-clock time. Faster, the simulated clock starts
    in the past (``backfill_s``), runs at ``speed`` until it nears the wall clock, then keeps
    pace with it, so the daemon never sees readings too far in the future.
    """
    start_ms = int(time.time() * 1000 - backfill_s(speed) * 1000)
    messages = generate_ward(
        ward, patients, start_ms, math.inf, scenario=demo_scenario(), seed=seed
    )
    return paced(messages, stop)

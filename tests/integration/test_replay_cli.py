"""`monitorme replay` against PostgreSQL gives what the core replay gives on the same readings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from monitorme.adapters.pg_writer import PgWriter, WriterConfig
from monitorme.config import load_rules
from monitorme.core.model import Outputs
from monitorme.core.replay import replay
from monitorme.metrics import Metrics
from tests.unit.test_replay import REG, START, recorded

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_replay_command_reports_the_alerts_of_stored_readings(pg_dsn: str, tmp_path: Path) -> None:
    readings = recorded()
    writer = PgWriter(WriterConfig("w1", pg_dsn), Metrics())
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    writer.submit(Outputs(readings=readings), [])
    stop.set()
    await task
    await writer.aclose()

    out_file = tmp_path / "replay.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
    env.update(MONITORME_DATABASE_URL=pg_dsn, MONITORME_WARD="w1")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "monitorme", "replay", "--from", str(START), "--to", str(START + 3_600_000),
         "--json", str(out_file)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "alerts raised:" in done.stdout
    got = orjson.loads(out_file.read_bytes())
    expected = replay(readings, "w1", load_rules(REG))
    assert got["summary"] == expected.summary()
    assert [a["id"] for a in got["alerts"]] == [a.id for a in expected.alerts]

    bad = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "monitorme", "replay", "--from", "soon"],
                                  env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--from" in bad.stderr

"""Rules at start and on SIGHUP, driving the real `monitorme run` process."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import orjson
import pytest

from monitorme.config import data_dir
from monitorme.demo.services import free_port
from monitorme.sim.model import SimMessage
from monitorme.sim.publisher import publish

pytestmark = pytest.mark.integration


def env_for(ward: str, mqtt_url: str, dsn: str, rules: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
    env.update(MONITORME_WARD=ward, MONITORME_MQTT_URL=mqtt_url, MONITORME_DATABASE_URL=dsn,
               MONITORME_HTTP=f"127.0.0.1:{free_port()}", MONITORME_RULES=str(rules), MONITORME_LOG_FORMAT="json")
    return env


def test_a_bad_rule_file_stops_the_start_naming_file_rule_and_reason(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(data_dir("rules"), rules)
    text = (rules / "spo2.toml").read_text().replace('compare = "<", threshold = 90', 'compare = "<<", threshold = 90')
    (rules / "spo2.toml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORME_")}
    env["MONITORME_RULES"] = str(rules)
    for command in (["check"], ["run", "--insecure-no-auth"]):
        done = subprocess.run([sys.executable, "-m", "monitorme", *command], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "spo2.toml" in done.stderr and "spo2_low" in done.stderr and "compare" in done.stderr


@pytest.mark.asyncio
async def test_sighup_reloads_rules_and_keeps_them_when_the_new_ones_are_bad(
        tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(data_dir("rules"), rules)
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "monitorme", "run", "--insecure-no-auth"],
                            env=env_for(ward, tuned_mqtt_url, pg_dsn, rules), stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_for_log(tmp_path / "daemon.log", "mqtt_connected")
        # tighten spo2_low to 95 %, reload, and 93 % now alarms
        spo2 = (rules / "spo2.toml").read_text()
        (rules / "spo2.toml").write_text(spo2.replace('compare = "<", threshold = 90', 'compare = "<", threshold = 95'))
        proc.send_signal(signal.SIGHUP)
        await wait_for_log(tmp_path / "daemon.log", "rules_reloaded")
        (rules / "broken.toml").write_text("[[rule]]\nname = 'x'\n")
        proc.send_signal(signal.SIGHUP)
        await wait_for_log(tmp_path / "daemon.log", "rules_reload_failed")
        t0 = int(time.time() * 1000) - 60_000
        msgs = [SimMessage(f"monitorme/{ward}/p1/spo2", orjson.dumps({"ts": t0 + i * 5000, "value": 93.0}),
                           t0 + i * 5000, "p1", "spo2") for i in range(6)]
        await asyncio.to_thread(publish, msgs, tuned_mqtt_url)
        conn = await asyncpg.connect(pg_dsn)
        try:
            deadline = time.monotonic() + 15
            while not await conn.fetchval("SELECT count(*) FROM alerts WHERE rule = 'spo2_low'"):
                assert time.monotonic() < deadline, "spo2_low at 95 % did not fire after the reload"
                await asyncio.sleep(0.2)
            doc = orjson.loads(await conn.fetchval("SELECT doc FROM alerts WHERE rule = 'spo2_low'"))
        finally:
            await conn.close()
        assert doc["explanation"]["threshold"] == 95
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        log.close()
    assert code == 0


async def wait_for_log(path: Path, event: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f'"event":"{event}"' in path.read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{event} not logged:\n{path.read_text(errors='replace')[-2000:]}")

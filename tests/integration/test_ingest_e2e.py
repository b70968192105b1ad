"""Acceptance: a simulated ward through a real broker and the daemon into PostgreSQL, nothing lost.

20 patients x all eight vitals, 10 simulated minutes published as fast as the broker
takes them, with 200 re-sent duplicates and 500 malformed messages of many kinds
interleaved: every valid reading arrives exactly once, every bad one is rejected with
its reason, counted and dead-lettered, none stored.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from monitorme.sim.malformed import malformed_messages
from monitorme.sim.model import SimMessage, expected_counts, generate_ward
from monitorme.sim.publisher import publish
from tests.conftest import broker_protocol
from tests.integration.daemon_harness import make_settings, running, wait_for_count

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio]


def interleave(valid: list[SimMessage], bad: list[SimMessage], dups: int, seed: int) -> list[SimMessage]:
    rng = random.Random(seed)
    stream = list(valid)
    step = len(stream) // (len(bad) + 1)
    for i, message in enumerate(bad):  # spread evenly through the run
        stream.insert((i + 1) * step + i, message)
    for message in rng.sample(valid, dups):  # re-sent later, as a device retrying would
        stream.insert(rng.randrange(stream.index(message) + 1, len(stream) + 1), message)
    return stream


async def test_simulated_ward_arrives_complete_with_rejections_counted(
    tmp_path: Path, ward: str, tuned_mqtt_url: str, pg_dsn: str
) -> None:
    start_ms = int(time.time() * 1000) - 15 * 60_000
    valid = list(generate_ward(ward, 20, start_ms, 600.0, seed=7))
    bad = malformed_messages(ward, 500, start_ms=start_ms + 1_000, seed=7)
    stream = interleave(valid, bad, 200, seed=7)
    expected = expected_counts(valid)
    assert {v for _, v in expected} == {"heart_rate", "blood_pressure", "spo2", "glucose", "respiration",
                                        "ecg", "temperature", "sleep"}
    assert len({(p, v) for p, v in expected}) == 20 * 8
    bad_reasons = Counter(m.malformed_reason for m in bad)
    assert len(bad_reasons) >= 10

    settings = make_settings(tmp_path, ward=ward, mqtt_url=tuned_mqtt_url, dsn=pg_dsn,
                             protocol=broker_protocol(tuned_mqtt_url))
    async with running(settings) as daemon:
        stats = await asyncio.to_thread(publish, stream, tuned_mqtt_url, qos=1)
        assert stats.acked == len(stream)
        stored = await wait_for_count(pg_dsn, "SELECT count(*) FROM readings", len(valid), timeout_s=120)
        rejected = await wait_for_count(pg_dsn, "SELECT count(*) FROM dead_letters", len(bad), timeout_s=30)
        await asyncio.sleep(0.5)  # anything extra (a duplicate stored twice) would land now
        metrics = daemon.metrics

    assert (stored, rejected) == (len(valid), len(bad))
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT patient_id, vital, count(*) AS n FROM readings GROUP BY 1, 2")
        assert {(r["patient_id"], r["vital"]): r["n"] for r in rows} == expected
        assert await conn.fetchval("SELECT count(*) FROM readings") == len(valid)
        letters = await conn.fetch("SELECT reason, count(*) AS n FROM dead_letters GROUP BY 1")
        assert {r["reason"]: r["n"] for r in letters} == dict(bad_reasons)
        assert await conn.fetchval("SELECT max(length(payload)) FROM dead_letters") <= 4096
    finally:
        await conn.close()
    counted = {dict(labels)["reason"]: n for labels, n in metrics.labelled("monitorme_rejected_total").items()}
    assert counted == dict(bad_reasons)
    duplicates = metrics.total("monitorme_duplicates_total")
    assert duplicates == 200
    assert metrics.get("monitorme_stored_total") == len(valid)

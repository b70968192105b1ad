"""Replay is deterministic: a recorded stretch gives the same alerts as the golden file, every time.

Regenerate the golden file after an intended rule change with ``UPDATE_GOLDEN=1 pytest tests/unit/test_replay.py``
and review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from monitorme.config import load_pipelines, load_rules
from monitorme.core.decode import DecodeLimits
from monitorme.core.engine import Engine, EngineConfig
from monitorme.core.model import RawMessage, Reading
from monitorme.core.replay import replay
from monitorme.sim.model import generate_ward

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "replay_deterioration.json"
START = 1_796_270_400_000  # 2026-12-03T04:00:00Z: patients asleep at first, then waking
REG = load_pipelines()


def recorded() -> list[Reading]:
    """40 simulated minutes of 3 patients, p001 deteriorating, decoded as the daemon stores them."""
    engine = Engine(EngineConfig("w1", DecodeLimits(max_age_ms=10**13, max_future_ms=10**13)), REG)
    readings: list[Reading] = []
    for m in generate_ward("w1", 3, START, 2400, scenario="deterioration", seed=11):
        readings += engine.handle([RawMessage(m.topic, m.payload, m.ts_ms)], m.ts_ms).readings
    return readings


def as_golden(readings: list[Reading]) -> dict[str, object]:
    report = replay(readings, "w1", load_rules(REG))
    changes = [{"id": a.id, "patient": a.patient, "rule": a.rule, "state": a.state.value,
                "priority": a.priority.value, "ts": a.ts, "escalation_level": a.escalation_level,
                "reminders": a.reminders, "message": a.message} for a in report.alerts]
    return {"summary": report.summary(), "changes": changes}


def test_replay_matches_the_golden_file_and_repeats_exactly() -> None:
    readings = recorded()
    first = as_golden(readings)
    assert as_golden(readings) == first  # the same readings, the same alerts
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_bytes(orjson.dumps(first, option=orjson.OPT_INDENT_2) + b"\n")
    assert first == orjson.loads(GOLDEN.read_bytes())
    rules_raised = {c["rule"] for c in first["changes"]}  # type: ignore[union-attr]
    assert rules_raised, "the deterioration scenario must raise something"

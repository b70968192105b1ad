"""Every rule of the default set, in event time through the engine: raised when it should, not otherwise."""

from __future__ import annotations

import pytest

from monitorme.config import load_pipelines, load_rules
from monitorme.core.alerts import AlertState
from monitorme.core.decode import DecodeLimits
from monitorme.core.engine import Engine, EngineConfig
from tests.scenarios import Scenario, all_scenarios

BASE = 1_796_306_400_000
REG = load_pipelines()
RULES = load_rules(REG)
SCENARIOS = list(all_scenarios())


def run(sc: Scenario) -> list:
    engine = Engine(EngineConfig("w1", DecodeLimits(max_age_ms=10**13, max_future_ms=10**13)), REG, rules=RULES)
    if sc.thresholds:
        engine.set_patient("p1", None, sc.thresholds)
    alerts = []
    for msg in sc.messages("w1", "p1", BASE):
        out = engine.handle([msg], msg.received_ms)
        assert not out.rejections, out.rejections
        assert not out.faults, out.faults
        alerts += out.alerts
    return alerts


def test_every_default_rule_has_a_scenario() -> None:
    covered = {rule for sc in SCENARIOS for rule in sc.expect}
    technical = {r.name for r in RULES.rules if r.silence_s}
    assert {r.name for r in RULES.rules} - technical - covered == set()


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_scenario(sc: Scenario) -> None:
    alerts = run(sc)
    raised = {}
    for a in alerts:
        if a.state is AlertState.RAISED and a.rule not in raised:
            raised[a.rule] = a
    for rule, (lo, hi) in sc.expect.items():
        assert rule in raised, f"{rule} not raised; got {sorted(raised)}"
        offset = raised[rule].ts - BASE
        assert lo <= offset <= hi, f"{rule} raised at {offset} ms, expected within [{lo}, {hi}]"
        assert raised[rule].explanation["threshold"] is not None
        assert raised[rule].patient_state == ("asleep" if sc.asleep else "unknown")
    for rule in sc.forbid:
        assert rule not in raised, f"{rule} must not be raised in {sc.name}: {raised[rule].message}"
    for rule, n in sc.alerts_of.items():
        assert len({a.id for a in alerts if a.rule == rule}) == n, rule

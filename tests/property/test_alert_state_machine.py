"""The alert lifecycle as a Hypothesis state machine over the real engine and default rules."""

from __future__ import annotations

import orjson
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from monitorme.config import load_pipelines, load_rules
from monitorme.core.alerts import Alert, AlertState
from monitorme.core.decode import DecodeLimits
from monitorme.core.engine import Engine, EngineConfig
from monitorme.core.model import RawMessage

BASE = 1_796_306_400_000
REG = load_pipelines()
RULES = load_rules(REG)


class AlertLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(EngineConfig("w1", DecodeLimits(max_age_ms=10**13, max_future_ms=10**13)), REG,
                             rules=RULES)
        self.t = 0
        self.wall = BASE
        self.last: dict[str, Alert] = {}  # alert id -> latest change seen
        self.resolved: set[str] = set()

    def _absorb(self, alerts: list[Alert]) -> None:
        for a in alerts:
            assert a.id not in self.resolved, f"{a.rule} changed after it was resolved"
            before = self.last.get(a.id)
            if before is not None and a.state is AlertState.ACKNOWLEDGED:
                assert a.priority is before.priority, "an acknowledgement changed the priority"
            if a.state is AlertState.RESOLVED:
                assert not a.condition_active, "resolved while the condition was still active"
                if a.latching:
                    assert a.acknowledged_by is not None, "a latching alert resolved without an acknowledgement"
                self.resolved.add(a.id)
            if a.state is AlertState.ESCALATED:
                assert a.acknowledged_by is None
            self.last[a.id] = a

    @rule(value=st.sampled_from([70.0, 79.0, 85.0, 88.0, 89.5, 90.5, 91.5, 93.0, 97.0]), n=st.integers(1, 8))
    def spo2_readings(self, value: float, n: int) -> None:
        for _ in range(n):
            self.t += 5000
            self.wall += 5000
            doc = {"ts": BASE + self.t, "value": value}
            out = self.engine.handle([RawMessage("monitorme/w1/p1/spo2", orjson.dumps(doc), self.wall)], self.wall)
            self._absorb(out.alerts)

    @rule(data=st.data())
    def acknowledge_one(self, data: st.DataObject) -> None:
        open_alerts = self.engine.analyzer.open_alerts("p1")
        if not open_alerts:
            return
        target = data.draw(st.sampled_from(open_alerts))
        changed, out = self.engine.acknowledge(target.id, "nurse")
        if changed is not None:
            assert changed.priority is target.priority
        self._absorb(out.alerts)

    @rule(seconds=st.integers(1, 400))
    def time_passes_without_data(self, seconds: int) -> None:
        self.wall += seconds * 1000
        self._absorb(self.engine.tick(self.wall).alerts)

    @invariant()
    def one_open_alert_per_rule(self) -> None:
        open_ids = [a for a in self.last.values() if a.id not in self.resolved]
        rules = [a.rule for a in open_ids]
        assert len(rules) == len(set(rules)), rules
        assert {a.id for a in self.engine.analyzer.open_alerts("p1")} == {a.id for a in open_ids}


TestAlertLifecycle = AlertLifecycle.TestCase
TestAlertLifecycle.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)

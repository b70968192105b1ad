"""Backtest: run stored readings through a rule set in event time and report the alerts it would raise.

Deterministic: the wall clock of the live daemon (no-data timers, escalation) is replaced by
event time, ticked every second of it, so the same readings always give the same alerts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitorme.core.alerts import Alert, AlertKind, AlertState
from monitorme.core.analysis import AnalysisOutputs, Analyzer, ScoreUpdate
from monitorme.core.model import Reading
from monitorme.core.ruleset import RuleSet

_DAY_MS = 86_400_000


@dataclass
class ReplayReport:
    """What a rule set made of a stretch of readings."""

    alerts: list[Alert] = field(default_factory=list)  # every state change, in order
    scores: list[ScoreUpdate] = field(default_factory=list)  # every NEWS2 change, in order
    readings: int = 0
    late: int = 0
    patients: set[str] = field(default_factory=set)
    first_ts: int | None = None
    last_ts: int | None = None

    @property
    def raised(self) -> list[Alert]:
        """The first change of each alert: one per alert raised."""
        seen: set[str] = set()
        out = []
        for a in self.alerts:
            if a.id not in seen:
                seen.add(a.id)
                out.append(a)
        return out

    @property
    def patient_days(self) -> float:
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return len(self.patients) * max(self.last_ts - self.first_ts, 1) / _DAY_MS

    def summary(self) -> dict[str, Any]:
        raised = self.raised
        by_rule = Counter((a.rule, a.priority.value) for a in raised)
        clinical = [a for a in raised if a.kind is not AlertKind.TECHNICAL]
        days = self.patient_days
        return {
            "readings": self.readings, "late": self.late, "patients": len(self.patients),
            "from": self.first_ts, "to": self.last_ts, "patient_days": round(days, 3),
            "alerts": len(raised), "clinical_alerts": len(clinical),
            "alerts_per_patient_day": round(len(raised) / days, 3) if days else None,
            "clinical_alerts_per_patient_day": round(len(clinical) / days, 3) if days else None,
            "by_rule": [{"rule": r, "priority": p, "count": n} for (r, p), n in sorted(by_rule.items())],
            "by_priority": dict(sorted(Counter(a.priority.value for a in raised).items())),
        }


class Replayer:
    """Feeds readings (in event-time order, in as many chunks as needed) through a rule set; no I/O.

    Args:
        ward: for alert ids.
        rules: the rule set to try.
        patients: per patient ``(station, thresholds)`` to apply, as the live ward has them.
        lateness_ms: same meaning as in the daemon.
        tick_ms: how often (in event time) the no-data and escalation timers run.
    """

    def __init__(self, ward: str, rules: RuleSet, *,
                 patients: Mapping[str, tuple[str | None, dict[str, Any] | None]] | None = None,
                 lateness_ms: int = 60_000, tick_ms: int = 1000) -> None:
        self.analyzer = Analyzer(ward, rules, lateness_ms=lateness_ms)
        for patient, (station, thresholds) in (patients or {}).items():
            self.analyzer.set_patient(patient, station, thresholds)
        self.tick_ms = tick_ms
        self.report = ReplayReport()
        self._out = AnalysisOutputs()
        self._next_tick: int | None = None

    def feed(self, readings: Iterable[Reading]) -> None:
        report, out, analyzer = self.report, self._out, self.analyzer
        for reading in readings:
            ts = reading.ts_ms
            if self._next_tick is None:
                self._next_tick = ts + self.tick_ms
            while ts >= self._next_tick:
                analyzer.tick(self._next_tick, out)
                self._next_tick += self.tick_ms
            analyzer.on_readings([reading], ts, out)
            report.readings += 1
            report.patients.add(reading.patient)
            report.first_ts = ts if report.first_ts is None else min(report.first_ts, ts)
            report.last_ts = ts if report.last_ts is None else max(report.last_ts, ts)

    def finish(self) -> ReplayReport:
        self.report.alerts = self._out.alerts
        self.report.scores = self._out.scores
        self.report.late = self._out.late
        return self.report


def replay(readings: Iterable[Reading], ward: str, rules: RuleSet, **options: Any) -> ReplayReport:
    """One-shot ``Replayer``: feed everything, return the report."""
    replayer = Replayer(ward, rules, **options)
    replayer.feed(readings)
    return replayer.finish()


def open_at_end(report: ReplayReport) -> list[Alert]:
    """Alerts still open when the stretch ended."""
    last: dict[str, Alert] = {}
    for a in report.alerts:
        last[a.id] = a
    return [a for a in last.values() if a.state is not AlertState.RESOLVED]

"""Alert values and their lifecycle: raised -> escalated -> acknowledged -> resolved (IEC 60601-1-8 style).

Transitions are pure functions returning a new ``Alert`` (``dataclasses.replace``); the
rules decide *when*, this module decides *what may follow what*:

- one open alert per (patient, rule); a resolved alert never reopens (a new breach is a new alert);
- a latching alert (high priority by default) stays open after its condition clears,
  until someone acknowledges it;
- acknowledging silences the current condition only: it never changes the priority, and a
  worse condition (a higher tier) sounds again as ``raised``;
- escalation happens while unacknowledged, one step per configured delay.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Priority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}


class AlertState(StrEnum):
    RAISED = "raised"
    ESCALATED = "escalated"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class AlertKind(StrEnum):
    THRESHOLD = "threshold"
    TREND = "trend"
    SCORE = "score"
    TECHNICAL = "technical"


_NAMESPACE = uuid.UUID("6d6f6e69-746f-726d-652d-616c65727473")


def alert_id(ward: str, patient: str, rule: str, raised_ts: int) -> str:
    """Deterministic id, so a replay gives the same ids and retried writes are upserts."""
    return str(uuid.uuid5(_NAMESPACE, f"{ward}/{patient}/{rule}/{raised_ts}"))


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as CONTRACT.md §3 describes it, plus what explains it."""

    id: str
    ward: str
    patient: str
    station: str | None
    rule: str
    vital: str | None
    kind: AlertKind
    priority: Priority
    state: AlertState
    value: Any
    ts: int  # event time of the reading that caused this state
    message: str
    patient_state: str
    raised_ts: int
    latching: bool = False
    condition_active: bool = True
    acknowledged_by: str | None = None
    escalation_level: int = 0
    reminders: int = 0
    raised_wall_ms: int = 0  # wall clock when raised: escalation and reminders run on it
    last_notified_wall_ms: int = 0
    explanation: dict[str, Any] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.state is not AlertState.RESOLVED

    def as_json(self) -> dict[str, Any]:
        """The wire form (CONTRACT.md §3 fields first, then extras)."""
        return {
            "id": self.id, "ward": self.ward, "patient": self.patient, "station": self.station,
            "rule": self.rule, "vital": self.vital, "kind": self.kind.value, "priority": self.priority.value,
            "state": self.state.value, "value": self.value, "ts": self.ts, "message": self.message,
            "patient_state": self.patient_state, "raised_ts": self.raised_ts, "latching": self.latching,
            "condition_active": self.condition_active, "acknowledged_by": self.acknowledged_by,
            "escalation_level": self.escalation_level, "reminders": self.reminders,
            "detected_at": self.last_notified_wall_ms,  # wall clock of this change: signal delay = now - this
            "explanation": self.explanation,
        }


def acknowledge(alert: Alert, by: str, ts: int) -> Alert | None:
    """Acknowledge an open alert; resolves it at once if its condition already cleared.

    Returns None when there is nothing to do (already acknowledged or resolved).
    """
    if alert.state in (AlertState.ACKNOWLEDGED, AlertState.RESOLVED):
        return None
    if not alert.condition_active:
        return replace(alert, state=AlertState.RESOLVED, acknowledged_by=by, ts=ts)
    return replace(alert, state=AlertState.ACKNOWLEDGED, acknowledged_by=by)


def condition_cleared(alert: Alert, ts: int, value: Any, message: str) -> Alert:
    """The condition is over: resolve, unless a latching alert still waits for its acknowledgement."""
    if alert.latching and alert.state is not AlertState.ACKNOWLEDGED:
        return replace(alert, condition_active=False, ts=ts, value=value)
    return replace(alert, state=AlertState.RESOLVED, condition_active=False, ts=ts, value=value, message=message)


def worsened(alert: Alert, priority: Priority, ts: int, value: Any, message: str, explanation: dict[str, Any],
             wall_ms: int) -> Alert | None:
    """A higher tier of the same rule: sounds again as raised at the higher priority."""
    if priority.rank <= alert.priority.rank:
        return None
    return replace(alert, priority=priority, state=AlertState.RAISED, ts=ts, value=value, message=message,
                   explanation=explanation, escalation_level=0, raised_wall_ms=wall_ms,
                   last_notified_wall_ms=wall_ms, acknowledged_by=None)


def escalate(alert: Alert, wall_ms: int) -> Alert:
    return replace(alert, state=AlertState.ESCALATED, escalation_level=alert.escalation_level + 1,
                   last_notified_wall_ms=wall_ms)


def remind(alert: Alert, wall_ms: int) -> Alert:
    return replace(alert, reminders=alert.reminders + 1, last_notified_wall_ms=wall_ms)


@dataclass(frozen=True, slots=True)
class AlarmPolicy:
    """Wall-clock timers of unacknowledged alerts (CLINICAL.md §4 escalation, reminders)."""

    escalate_after_s: dict[Priority, tuple[float, ...]] = field(default_factory=lambda: {
        Priority.HIGH: (60.0, 120.0), Priority.MEDIUM: (300.0,), Priority.LOW: (),
    })
    remind_every_s: float = 120.0

    def due(self, alert: Alert, wall_ms: int) -> Alert | None:
        """The alert's next timer step if one is due now, else None."""
        if alert.state not in (AlertState.RAISED, AlertState.ESCALATED):
            return None
        steps = self.escalate_after_s.get(alert.priority, ())
        level = alert.escalation_level
        if level < len(steps) and wall_ms - alert.raised_wall_ms >= steps[level] * 1000:
            return escalate(alert, wall_ms)
        quiet_ms = wall_ms - alert.last_notified_wall_ms
        if alert.priority is not Priority.LOW and quiet_ms >= self.remind_every_s * 1000:
            return remind(alert, wall_ms)
        return None


def alert_from_json(doc: dict[str, Any]) -> Alert:
    """Rebuild an alert from its stored wire form (warm restart)."""
    return Alert(
        id=doc["id"], ward=doc["ward"], patient=doc["patient"], station=doc.get("station"), rule=doc["rule"],
        vital=doc.get("vital"), kind=AlertKind(doc["kind"]), priority=Priority(doc["priority"]),
        state=AlertState(doc["state"]), value=doc.get("value"), ts=int(doc["ts"]), message=doc["message"],
        patient_state=doc.get("patient_state", "unknown"), raised_ts=int(doc.get("raised_ts", doc["ts"])),
        latching=bool(doc.get("latching", False)), condition_active=bool(doc.get("condition_active", True)),
        acknowledged_by=doc.get("acknowledged_by"), escalation_level=int(doc.get("escalation_level", 0)),
        reminders=int(doc.get("reminders", 0)), explanation=dict(doc.get("explanation") or {}),
    )

"""Frozen value types that flow through the core: readings, rejections and engine outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NewType

if TYPE_CHECKING:  # only for annotations: these modules import this one
    from monitorme.core.alerts import Alert
    from monitorme.core.analysis import Fault, ScoreUpdate

PatientId = NewType("PatientId", str)
WardId = NewType("WardId", str)

#: A decoded value as it came in (numbers converted to the stored unit):
#: float for numbers, dict of floats for objects, str for enums,
#: ``(hz, samples)`` for waveforms.
JsonValue = float | dict[str, float] | str


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One MQTT message as received, before decoding.

    ``ack`` is an opaque token the source needs to acknowledge the message once
    what it caused is durable (None for QoS 0).
    """

    topic: str
    payload: bytes
    received_ms: int
    ack: object | None = None


@dataclass(frozen=True, slots=True)
class Waveform:
    """A chunk of evenly sampled signal, e.g. one second of ECG."""

    hz: float
    samples: bytes  # little-endian float32, the stored form (one copy, no lists)

    @property
    def count(self) -> int:
        return len(self.samples) // 4


@dataclass(frozen=True, slots=True)
class Reading:
    """One accepted measurement of one vital of one patient, in the stored unit."""

    patient: PatientId
    vital: str
    ts_ms: int
    value: float | dict[str, float] | str | Waveform
    device: str | None = None
    seq: int | None = None
    received_ms: int = 0

    @property
    def dedup_key(self) -> str:
        """Identity beyond (patient, vital, ts): device and seq when the device gave a seq.

        A redelivered message repeats ts, device and seq exactly; keeping ts in the
        identity means a device whose counter restarts is not mistaken for a duplicate.
        """
        if self.seq is None:
            return ""
        return f"{self.device or ''}#{self.seq}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input that was refused, kept for inspection in the dead-letter table."""

    topic: str
    reason: str
    detail: str
    payload: bytes  # truncated to the configured size
    payload_size: int
    received_ms: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One write by a person, for the audit table (who acknowledged, moved, changed, uploaded)."""

    at_ms: int
    actor: str
    role: str
    action: str
    patient: str | None = None
    alert_id: str | None = None
    detail: str = "{}"  # JSON text


@dataclass(slots=True)
class Outputs:
    """What one engine call produced, for the sinks to carry out.

    ``alerts`` are alert state changes (``Alert`` values), ``scores`` NEWS2 changes,
    ``faults`` analysis failures that were contained to one patient's vital.
    """

    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    duplicates: int = 0
    admitted: list[PatientId] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    scores: list[ScoreUpdate] = field(default_factory=list)
    late: int = 0
    faults: list[Fault] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)

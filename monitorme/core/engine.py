"""The core's one entry point: feed a batch of raw messages, get back what to store and count."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from monitorme.core.alerts import AlarmPolicy, Alert
from monitorme.core.analysis import AnalysisOutputs, Analyzer
from monitorme.core.decode import DecodeLimits, decode_reading
from monitorme.core.definitions import PipelineRegistry
from monitorme.core.model import Outputs, PatientId, RawMessage, Reading, Rejection
from monitorme.core.ruleset import RuleSet
from monitorme.errors import InputError

# Per (patient, vital): a broker redelivers what was unacknowledged when a connection broke, i.e.
# the last few hundred milliseconds; 128 identities is a minute of heart rate. Older repeats are
# still stored once (the database's unique key); they only reach the windows a second time.
_DEDUP_MEMORY = 128


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Settings of the core that do not change while it runs."""

    ward: str
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    dead_letter_bytes: int = 4096  # payload kept per rejection, enough to see what was wrong
    lateness_ms: int = 60_000  # a reading further behind its channel's newest moves no window
    policy: AlarmPolicy = field(default_factory=AlarmPolicy)


class _RecentKeys:
    """A bounded set of the most recent reading identities of one (patient, vital).

    Identities are kept as 64-bit hashes of (ts, device#seq), not the tuples: 500 patients x 8
    vitals x 128 tuples with their strings cost ~110 MB (bench/soak.py saw RSS climb with them);
    ints cost a quarter. Two different readings of one channel among its last 128 sharing a
    64-bit hash is a ~1e-16 event.
    """

    __slots__ = ("order", "seen")

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.order: deque[int] = deque()

    def add(self, key: int) -> bool:
        """Remember ``key``; False if it was already there (a duplicate)."""
        if key in self.seen:
            return False
        self.seen.add(key)
        self.order.append(key)
        if len(self.order) > _DEDUP_MEMORY:
            self.seen.discard(self.order.popleft())
        return True


class Engine:
    """Owns per-patient state; pure and synchronous, so tests drive it directly.

    >>> from monitorme.core.definitions import PipelineRegistry, parse_pipeline
    >>> reg = PipelineRegistry([parse_pipeline('vital="spo2"\\nvalue="number"\\nunit="%"\\n'
    ...                                        'period_s=5\\nrange=[0,100]', "spo2.toml")])
    >>> engine = Engine(EngineConfig("w1"), reg)
    >>> msg = RawMessage("monitorme/w1/p1/spo2", b'{"ts": 1000, "value": 97}', 1000)
    >>> out = engine.handle([msg, msg], now_ms=1000)
    >>> (len(out.readings), out.duplicates, out.admitted)
    (1, 1, ['p1'])
    """

    def __init__(
        self,
        config: EngineConfig,
        registry: PipelineRegistry,
        known_patients: Iterable[str] = (),
        rules: RuleSet | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self._known: set[str] = set(known_patients)
        self._recent: dict[tuple[PatientId, str], _RecentKeys] = {}
        self.analyzer = Analyzer(config.ward, rules or RuleSet((), registry), config.policy, config.lateness_ms)

    @property
    def patients(self) -> frozenset[str]:
        return frozenset(self._known)

    def handle(self, messages: Iterable[RawMessage], now_ms: int) -> Outputs:
        """Decode, validate and de-duplicate a batch; never raises for bad input."""
        out = Outputs()
        ward = self.config.ward
        registry = self.registry
        limits = self.config.limits
        recent = self._recent
        for message in messages:
            try:
                reading = decode_reading(message, ward, registry, now_ms, limits)
            except InputError as exc:
                out.rejections.append(self._reject(message, exc))
                continue
            key = (reading.patient, reading.vital)
            keys = recent.get(key)
            if keys is None:
                keys = recent[key] = _RecentKeys()
            if not keys.add(hash((reading.ts_ms, reading.dedup_key))):
                out.duplicates += 1
                continue
            if reading.patient not in self._known:
                self._known.add(reading.patient)
                out.admitted.append(reading.patient)
            out.readings.append(reading)
        self._carry(out, lambda a: self.analyzer.on_readings(out.readings, now_ms, a))
        return out

    def warm_up(self, readings: list[Reading], now_ms: int) -> Outputs:
        """Replay stored readings (oldest first) into windows and rule timers after a restart.

        What they cause is not sent again, with one exception: an alert that the replay leaves open
        but that was not restored as open (the daemon died between deciding it and storing it) is
        returned, to be sent now. Open alerts must be restored (``Analyzer.restore_alert``) first.
        The readings also fill the de-dup memory, so a redelivered copy does not count twice.
        """
        before = {a.id for ps in self.analyzer.patients.values() for a in ps.open_alerts.values()}
        for r in readings:
            keys = self._recent.get((r.patient, r.vital))
            if keys is None:
                keys = self._recent[(r.patient, r.vital)] = _RecentKeys()
            keys.add(hash((r.ts_ms, r.dedup_key)))
            self._known.add(r.patient)
        self.analyzer.on_readings(readings, now_ms, AnalysisOutputs())  # windows and timers; outputs dropped
        out = Outputs()
        out.alerts = [a for ps in self.analyzer.patients.values() for a in ps.open_alerts.values()
                      if a.id not in before]
        return out

    def tick(self, now_ms: int) -> Outputs:
        """Wall-clock work: no-data alerts, escalation and reminders."""
        out = Outputs()
        self._carry(out, lambda a: self.analyzer.tick(now_ms, a))
        return out

    def acknowledge(self, alert_id: str, by: str) -> tuple[Alert | None, Outputs]:
        """Acknowledge an open alert; the changed alert (or None) and what to send out."""
        out = Outputs()
        found: list[Alert | None] = []
        self._carry(out, lambda a: found.append(self.analyzer.acknowledge(alert_id, by, a)))
        return found[0], out

    def set_patient(self, patient: str, station: str | None, thresholds: dict[str, dict[str, object]] | None) -> None:
        """Apply an admission, a move or new per-patient thresholds at once."""
        self._known.add(patient)
        self.analyzer.set_patient(patient, station, thresholds)

    def discharge(self, patient: str, now_ms: int) -> Outputs:
        """Close the patient's alerts and forget its state; a new reading admits it again."""
        out = Outputs()
        self._carry(out, lambda a: self.analyzer.discharge(patient, now_ms, a))
        self.evict(patient)
        return out

    def reload_rules(self, rules: RuleSet) -> None:
        self.analyzer.reload(rules)

    @staticmethod
    def _carry(out: Outputs, run: Callable[[AnalysisOutputs], object]) -> None:
        analysis = AnalysisOutputs()
        run(analysis)
        out.alerts.extend(analysis.alerts)
        out.scores.extend(analysis.scores)
        out.late += analysis.late
        out.faults.extend(analysis.faults)

    def _reject(self, message: RawMessage, exc: InputError) -> Rejection:
        keep = self.config.dead_letter_bytes
        return Rejection(
            topic=message.topic[:512],
            reason=exc.reason,
            detail=exc.detail,
            payload=message.payload[:keep],
            payload_size=len(message.payload),
            received_ms=message.received_ms,
        )

    def evict(self, patient: str) -> None:
        """Forget a discharged patient's state."""
        self._known.discard(patient)
        self.analyzer.evict(patient)
        for key in [k for k in self._recent if k[0] == patient]:
            del self._recent[key]


"""Alert rules as data: parse ``rules/*.toml`` into ``RuleSpec``s and decide, reading by reading,
when a rule's condition has held long enough to raise and cleared long enough to resolve."""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from monitorme.core.alerts import AlertKind, Priority
from monitorme.core.features import NEEDS_COUNT, NEEDS_WINDOW, OPERATORS, FeatureSpec
from monitorme.errors import ConfigError

COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
#: vitals computed by the engine rather than received: rules may name them too
DERIVED_CHANNELS: dict[str, tuple[str, ...]] = {
    "news2": ("total", "max_part"),
    "ecg": ("hr", "max_rr_s", "since_qrs_s", "flat"),
}


@dataclass(frozen=True, slots=True)
class Condition:
    """``feature compare threshold``, e.g. median over 60 s < 90."""

    feature: FeatureSpec
    compare: str
    threshold: float

    def holds(self, value: float) -> bool:
        return COMPARE[self.compare](value, self.threshold)

    def cleared(self, value: float, hysteresis: float) -> bool:
        """Back inside the limit by the hysteresis margin (CLINICAL.md §4)."""
        if self.compare in ("<", "<="):
            return value >= self.threshold + hysteresis if hysteresis else not self.holds(value)
        return value <= self.threshold - hysteresis if hysteresis else not self.holds(value)


@dataclass(frozen=True, slots=True)
class Tier:
    """A worse level of the same condition that raises the priority (e.g. SBP <= 80 -> high)."""

    threshold: float
    priority: Priority


@dataclass(frozen=True, slots=True)
class Variant:
    """The numbers in force for one patient state (awake, asleep) or after an override."""

    threshold: float
    delay_s: float
    delay_readings: int
    tiers: tuple[Tier, ...]
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule of ``rules/*.toml``; see ``rules/README.md`` for the file format."""

    name: str
    vital: str
    channel: str  # "" for a number vital, else an object field or derived channel
    kind: AlertKind
    priority: Priority
    when: Condition
    awake: Variant
    asleep: Variant
    also: tuple[Condition, ...] = ()
    hysteresis: float = 0.0
    clear_delay_s: float | None = None
    latching: bool = False
    silence_s: float = 0.0  # technical no-data rules: wall-clock silence
    message: str = ""
    basis: str = ""
    source: str = ""

    def variant(self, asleep: bool) -> Variant:
        return self.asleep if asleep else self.awake

    @property
    def max_window_ms(self) -> int:
        return max(c.feature.window_ms for c in (self.when, *self.also))


_RULE_KEYS = {
    "name", "vital", "field", "kind", "priority", "when", "also", "delay_s", "delay_readings", "tiers",
    "asleep", "hysteresis", "clear_delay_s", "latching", "silence_s", "message", "basis", "enabled",
}
_WHEN_KEYS = {"op", "window_s", "count", "half_life_s", "compare", "threshold"}
_ASLEEP_KEYS = {"threshold", "delay_s", "delay_readings", "tiers", "enabled"}


def _num(raw: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = raw.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}", "is required")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key}", f"must be a number, got {value!r}")
    return float(value)


def _condition(raw: object, where: str) -> Condition:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table {op, compare, threshold, ...}")
    unknown = set(raw) - _WHEN_KEYS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", "unknown key")
    op = raw.get("op", "last")
    if op not in OPERATORS:
        raise ConfigError(f"{where}.op", f"must be one of {', '.join(sorted(OPERATORS))}, got {op!r}")
    compare = raw.get("compare")
    if compare not in COMPARE:
        raise ConfigError(f"{where}.compare", f"must be one of < <= > >=, got {compare!r}")
    feature = FeatureSpec(op, window_s=_num(raw, "window_s", where, 0), count=int(_num(raw, "count", where, 0)),
                          half_life_s=_num(raw, "half_life_s", where, 60))
    if op in NEEDS_WINDOW and feature.window_s <= 0:
        raise ConfigError(f"{where}.window_s", f"operator {op} needs a window_s > 0")
    if op in NEEDS_COUNT and feature.count < 1:
        raise ConfigError(f"{where}.count", f"operator {op} needs a count >= 1")
    return Condition(feature, compare, _num(raw, "threshold", where))


def _tiers(raw: object, where: str) -> tuple[Tier, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(where, "must be a list of {threshold, priority}")
    return tuple(Tier(_num(t, "threshold", where), _priority(t.get("priority"), f"{where}.priority")) for t in raw)


def _priority(raw: object, where: str) -> Priority:
    try:
        return Priority(str(raw))
    except ValueError:
        raise ConfigError(where, f"must be high, medium or low, got {raw!r}") from None


def parse_rule(raw: Mapping[str, Any], where: str, channels: Mapping[str, tuple[str, ...]]) -> RuleSpec:
    """Check one ``[[rule]]`` table against the known vitals and their channels."""
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ConfigError(f"{where}.name", "is required")
    where = f"{where} ({raw['name']})"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: {sorted(unknown)[0]}", "unknown key")
    vital = raw.get("vital")
    if not isinstance(vital, str) or vital not in channels:
        raise ConfigError(f"{where}: vital", f"{vital!r} has no pipeline (known: {', '.join(sorted(channels))})")
    channel = raw.get("field", "")
    no_data = raw.get("kind") == "technical" and "silence_s" in raw  # watches the device, not a channel
    if not no_data and channel not in channels[vital]:
        raise ConfigError(f"{where}: field", f"{vital} has fields {list(channels[vital])}, not {channel!r}")
    try:
        kind = AlertKind(raw.get("kind", "threshold"))
    except ValueError:
        raise ConfigError(f"{where}: kind", "must be threshold, trend, score or technical") from None
    priority = _priority(raw.get("priority"), f"{where}: priority")
    silence_s = _num(raw, "silence_s", where, 0)
    if kind is AlertKind.TECHNICAL and silence_s:
        when = Condition(FeatureSpec("last"), ">=", silence_s)  # wall-clock silence; no reading condition
    else:
        when = _condition(raw.get("when"), f"{where}: when")
    also_raw = raw.get("also", [])
    if not isinstance(also_raw, list):
        raise ConfigError(f"{where}: also", "must be a list of conditions")
    also = tuple(_condition(c, f"{where}: also[{i}]") for i, c in enumerate(also_raw))
    awake = Variant(
        threshold=when.threshold, delay_s=_num(raw, "delay_s", where, 0),
        delay_readings=int(_num(raw, "delay_readings", where, 1)), tiers=_tiers(raw.get("tiers"), f"{where}: tiers"),
        enabled=bool(raw.get("enabled", True)),
    )
    asleep_raw = raw.get("asleep", {})
    if not isinstance(asleep_raw, dict) or set(asleep_raw) - _ASLEEP_KEYS:
        raise ConfigError(f"{where}: asleep", f"must be a table of {sorted(_ASLEEP_KEYS)}")
    asleep = apply_override(awake, asleep_raw, f"{where}: asleep")
    message = raw.get("message", "")
    if not isinstance(message, str) or not message:
        raise ConfigError(f"{where}: message", "a one-sentence message template is required")
    check_template(message, f"{where}: message")
    clear_delay = raw.get("clear_delay_s")
    return RuleSpec(
        name=raw["name"], vital=vital, channel=channel, kind=kind, priority=priority, when=when,
        awake=awake, asleep=asleep, also=also, hysteresis=_num(raw, "hysteresis", where, 0),
        clear_delay_s=float(clear_delay) if clear_delay is not None else None,
        latching=bool(raw.get("latching", priority is Priority.HIGH)), silence_s=silence_s,
        message=message, basis=str(raw.get("basis", "")), source=where.split(" ", 1)[0],
    )


def apply_override(base: Variant, raw: Mapping[str, Any], where: str) -> Variant:
    """A variant with some numbers replaced (asleep tables and per-patient overrides)."""
    if not raw:
        return base
    return replace(
        base,
        threshold=_num(raw, "threshold", where, base.threshold),
        delay_s=_num(raw, "delay_s", where, base.delay_s),
        delay_readings=int(_num(raw, "delay_readings", where, base.delay_readings)),
        tiers=_tiers(raw["tiers"], f"{where}.tiers") if "tiers" in raw else base.tiers,
        enabled=bool(raw.get("enabled", base.enabled)),
    )


_TEMPLATE_FIELDS = {"value": 1.0, "threshold": 1.0, "held_s": 1.0, "patient_state": "awake", "patient": "p",
                    "baseline": 1.0, "unit": "", "score": 1.0, "silence_s": 1.0}


def check_template(message: str, where: str) -> None:
    try:
        message.format(**_TEMPLATE_FIELDS)
    except (KeyError, ValueError, IndexError) as exc:
        raise ConfigError(where, f"bad template {message!r}: {exc!r}; fields: {sorted(_TEMPLATE_FIELDS)}") from None


def parse_rules(texts: Mapping[str, str], channels: Mapping[str, tuple[str, ...]]) -> list[RuleSpec]:
    """Every ``[[rule]]`` of every file, names unique across files.

    Raises:
        ConfigError: naming file, rule and problem.
    """
    rules: list[RuleSpec] = []
    seen: dict[str, str] = {}
    for source, text in sorted(texts.items()):
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, f"not valid TOML: {exc}") from None
        if set(doc) - {"rule"}:
            raise ConfigError(f"{source}: {sorted(set(doc) - {'rule'})[0]}", "unknown key (expected [[rule]] tables)")
        for i, raw in enumerate(doc.get("rule", [])):
            rule = parse_rule(raw, f"{source}: rule[{i}]", channels)
            if rule.name in seen:
                raise ConfigError(f"{source}: {rule.name}", f"name already used in {seen[rule.name]}")
            seen[rule.name] = source
            rules.append(rule)
    return rules


def validate_overrides(rules: Iterable[RuleSpec], overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Check per-patient ``thresholds`` (``{rule: {threshold, delay_s, ..., asleep: {...}}}`` plus ``news2``)."""
    by_name = {r.name: r for r in rules}
    clean: dict[str, dict[str, Any]] = {}
    for name, raw in overrides.items():
        if name == "news2":
            clean[name] = validate_news2_options(raw)
            continue
        if name not in by_name:
            raise ConfigError(f"thresholds.{name}", "no such rule")
        if not isinstance(raw, dict) or set(raw) - (_ASLEEP_KEYS | {"asleep"}):
            raise ConfigError(f"thresholds.{name}", f"keys are {sorted(_ASLEEP_KEYS | {'asleep'})}")
        rule = by_name[name]
        apply_override(rule.awake, {k: v for k, v in raw.items() if k != "asleep"}, f"thresholds.{name}")
        apply_override(rule.asleep, raw.get("asleep", {}), f"thresholds.{name}.asleep")
        clean[name] = dict(raw)
    return clean


def validate_news2_options(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) - {"on_oxygen", "spo2_scale", "consciousness"}:
        raise ConfigError("thresholds.news2", "keys are on_oxygen, spo2_scale, consciousness")
    if "on_oxygen" in raw and not isinstance(raw["on_oxygen"], bool):
        raise ConfigError("thresholds.news2.on_oxygen", "must be true or false")
    if raw.get("spo2_scale", 1) not in (1, 2):
        raise ConfigError("thresholds.news2.spo2_scale", "must be 1 or 2")
    if raw.get("consciousness", "A") not in ("A", "C", "V", "P", "U"):
        raise ConfigError("thresholds.news2.consciousness", "must be one of A, C, V, P, U")
    return dict(raw)


@dataclass(slots=True)
class RuleState:
    """Per (patient, rule): since when the condition holds, since when it has cleared."""

    since_ts: int | None = None
    readings: int = 0
    clear_since_ts: int | None = None
    active: bool = False
    alert_id: str | None = None
    priority: Priority | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    """What one evaluation decided."""

    raise_now: bool = False
    clear_now: bool = False
    held_s: float = 0.0


def step(state: RuleState, holds: bool, cleared: bool, ts: int, period_s: float, variant: Variant,
         clear_delay_s: float) -> Step:
    """Advance a rule's persistence state by one evaluation at event time ``ts``.

    ``held`` counts the first reading's own period, so "15 s" of SpO2 at 5 s per reading is
    three readings in alarm (CLINICAL.md's table).

    >>> s = RuleState(); v = Variant(90, 15, 1, ())
    >>> [step(s, True, False, t, 5, v, 15).raise_now for t in (0, 5000, 10000)]
    [False, False, True]
    """
    if holds:
        state.clear_since_ts = None
        if state.since_ts is None or ts < state.since_ts:
            state.since_ts, state.readings = ts, 0
        state.readings += 1
        held_s = (ts - state.since_ts) / 1000 + period_s
        if not state.active and held_s >= variant.delay_s and state.readings >= variant.delay_readings:
            state.active = True
            return Step(raise_now=True, held_s=held_s)
        return Step(held_s=held_s)
    state.since_ts, state.readings = None, 0
    if not state.active:
        return Step()
    if not cleared:  # inside the hysteresis band: neither alarming nor clear
        state.clear_since_ts = None
        return Step()
    if state.clear_since_ts is None or ts < state.clear_since_ts:
        state.clear_since_ts = ts
    clear_s = (ts - state.clear_since_ts) / 1000 + period_s
    if clear_s >= clear_delay_s:
        state.active = False
        state.clear_since_ts = None
        return Step(clear_now=True, held_s=clear_s)
    return Step()

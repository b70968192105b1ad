"""The rules in force, indexed for the engine: by (vital, channel), and the no-data rules by vital."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from monitorme.core.alerts import AlertKind
from monitorme.core.definitions import PipelineRegistry, ValueKind
from monitorme.core.rules import DERIVED_CHANNELS, RuleSpec, parse_rules

MIN_HORIZON_MS = 10 * 60_000  # NEWS2 smooths over 5 min; keep a margin for late readings


def channels_of(registry: PipelineRegistry) -> dict[str, tuple[str, ...]]:
    """The numeric channels each vital feeds (``""`` for a plain number)."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in registry:
        if spec.kind is ValueKind.OBJECT:
            out[spec.vital] = tuple(spec.fields)
        elif spec.kind is ValueKind.WAVEFORM:
            out[spec.vital] = DERIVED_CHANNELS.get(spec.vital, ())
        else:
            out[spec.vital] = ("",)
    out["news2"] = DERIVED_CHANNELS["news2"]
    return out


class RuleSet:
    """Rules grouped for evaluation; built once per (re)load."""

    def __init__(self, rules: Iterable[RuleSpec], registry: PipelineRegistry) -> None:
        self.rules = tuple(rules)
        self.registry = registry
        self.by_name = {r.name: r for r in self.rules}
        self.on_channel: dict[tuple[str, str], tuple[RuleSpec, ...]] = {}
        self.no_data: dict[str, tuple[RuleSpec, ...]] = {}
        for rule in self.rules:
            if rule.kind is AlertKind.TECHNICAL and rule.silence_s:
                self.no_data[rule.vital] = (*self.no_data.get(rule.vital, ()), rule)
            else:
                key = (rule.vital, rule.channel)
                self.on_channel[key] = (*self.on_channel.get(key, ()), rule)

    def period_s(self, rule: RuleSpec) -> float:
        """The reading period a rule's persistence counts per reading (0 for derived scores)."""
        spec = self.registry.get(rule.vital)
        return spec.period_s if spec is not None and rule.vital != "news2" else 0.0

    @classmethod
    def from_texts(cls, texts: Mapping[str, str], registry: PipelineRegistry) -> RuleSet:
        return cls(parse_rules(texts, channels_of(registry)), registry)

    def horizon_ms(self, vital: str, channel: str) -> int:
        """How much history a channel needs: its longest window, or enough readings for a count."""
        spec = self.registry.get(vital)
        period_ms = round((spec.period_s if spec else 1.0) * 1000)
        need = MIN_HORIZON_MS
        if vital == "blood_pressure":
            need = max(need, 2 * 3_600_000 + period_ms)  # NEWS2 takes BP up to 2 h old
        if vital == "temperature":
            need = max(need, 30 * 60_000 + period_ms)
        for rule in self.on_channel.get((vital, channel), ()):
            for cond in (rule.when, *rule.also):
                need = max(need, cond.feature.window_ms, (cond.feature.count + 1) * period_ms * 2)
        return need

"""Turn the TOML text of a pipeline file into a checked ``PipelineSpec`` (no file I/O here)."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import cast

from monitorme.errors import ConfigError

VITAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ValueKind(StrEnum):
    """The closed set of value shapes a vital can have on the wire."""

    NUMBER = "number"  # a plain number, e.g. heart rate
    OBJECT = "object"  # named numbers, e.g. blood pressure
    ENUM = "enum"  # one of a few words, e.g. sleep state
    WAVEFORM = "waveform"  # {"hz": n, "samples": [...]}, e.g. an ECG chunk


@dataclass(frozen=True, slots=True)
class UnitConversion:
    """An accepted alternative unit: stored = value * scale + offset."""

    scale: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        return value * self.scale + self.offset


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One named number inside an object value."""

    low: float
    high: float
    required: bool = True


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """Everything the engine needs to know about one kind of vital sign."""

    vital: str
    title: str
    kind: ValueKind
    unit: str
    period_s: float
    low: float = -math.inf  # physically possible range (numbers, waveform samples)
    high: float = math.inf
    units: Mapping[str, UnitConversion] = field(default_factory=dict)
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    ordered: tuple[str, ...] = ()  # object fields that must not decrease in this order
    primary: str | None = None  # object field used when downsampling keeps peaks
    choices: tuple[str, ...] = ()
    hz_low: float = 1.0
    hz_high: float = 10_000.0
    max_samples: int = 10_000
    display_unit: str = ""
    loinc: str = ""


_TOP_KEYS = {
    "vital", "title", "value", "unit", "display_unit", "period_s", "range", "units", "fields",
    "ordered", "primary", "choices", "hz_range", "max_samples", "fhir",
}


def _need(doc: Mapping[str, object], key: str, kind: type, where: str) -> object:
    if key not in doc:
        raise ConfigError(f"{where}: {key}", "is required")
    value = doc[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}: {key}", f"must be {kind.__name__}, got {value!r}")
    return value


def _range(value: object, where: str) -> tuple[float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not value[0] < value[1]
    ):
        raise ConfigError(where, f"must be [low, high] numbers with low < high, got {value!r}")
    return float(value[0]), float(value[1])


def parse_pipeline(text: str, source: str) -> PipelineSpec:
    """Parse one pipeline file.

    Args:
        text: the TOML text.
        source: its name, for error messages (e.g. ``pipelines/spo2.toml``).

    Returns:
        The checked spec.

    Raises:
        ConfigError: naming the file and key that is wrong.

    >>> spec = parse_pipeline('vital = "etco2"\\nvalue = "number"\\nunit = "mm[Hg]"\\n'
    ...                       'period_s = 1\\nrange = [0, 150]', "etco2.toml")
    >>> (spec.vital, spec.kind, spec.high)
    ('etco2', <ValueKind.NUMBER: 'number'>, 150.0)
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"not valid TOML: {exc}") from exc
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: {sorted(unknown)[0]}", "unknown key")
    vital = cast(str, _need(doc, "vital", str, source))
    if not VITAL_NAME.match(vital):
        raise ConfigError(f"{source}: vital", f"must match {VITAL_NAME.pattern}, got {vital!r}")
    kind_text = cast(str, _need(doc, "value", str, source))
    try:
        kind = ValueKind(kind_text)
    except ValueError:
        choices = ", ".join(k.value for k in ValueKind)
        raise ConfigError(f"{source}: value", f"must be one of {choices}, got {kind_text!r}") from None
    period_s = cast(float, _need(doc, "period_s", float, source))
    if period_s <= 0:
        raise ConfigError(f"{source}: period_s", "must be positive")
    fhir = doc.get("fhir", {})
    if not isinstance(fhir, dict):
        raise ConfigError(f"{source}: fhir", "must be a table")
    spec: dict[str, object] = {
        "vital": vital,
        "title": str(doc.get("title", vital.replace("_", " ").capitalize())),
        "kind": kind,
        "unit": str(doc.get("unit", "")),
        "display_unit": str(doc.get("display_unit", doc.get("unit", ""))),
        "period_s": period_s,
        "loinc": str(fhir.get("loinc", "")),
    }
    if kind in (ValueKind.NUMBER, ValueKind.WAVEFORM):
        spec["low"], spec["high"] = _range(doc.get("range"), f"{source}: range")
    if kind is ValueKind.NUMBER:
        spec["units"] = _units(doc.get("units", {}), source)
    if kind is ValueKind.OBJECT:
        spec.update(_object_fields(doc, source))
    if kind is ValueKind.ENUM:
        words = doc.get("choices")
        if not isinstance(words, list) or not words or not all(isinstance(c, str) for c in words):
            raise ConfigError(f"{source}: choices", "must be a non-empty list of strings")
        spec["choices"] = tuple(words)
    if kind is ValueKind.WAVEFORM:
        spec["hz_low"], spec["hz_high"] = _range(doc.get("hz_range", [1, 10_000]), f"{source}: hz_range")
        max_samples = doc.get("max_samples", 10_000)
        if not isinstance(max_samples, int) or max_samples < 1:
            raise ConfigError(f"{source}: max_samples", "must be a positive integer")
        spec["max_samples"] = max_samples
    return PipelineSpec(**spec)  # type: ignore[arg-type]


def _units(raw: object, source: str) -> dict[str, UnitConversion]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: units", "must be a table of unit = {scale, offset}")
    out: dict[str, UnitConversion] = {}
    for name, conv in raw.items():
        where = f"{source}: units.{name}"
        if not isinstance(conv, dict) or set(conv) - {"scale", "offset"}:
            raise ConfigError(where, "must be a table with scale and optional offset")
        scale = _need(conv, "scale", float, where)
        offset = conv.get("offset", 0.0)
        if not isinstance(offset, int | float) or isinstance(offset, bool):
            raise ConfigError(f"{where}.offset", "must be a number")
        out[name] = UnitConversion(cast(float, scale), float(offset))
    return out


def _object_fields(doc: Mapping[str, object], source: str) -> dict[str, object]:
    raw = doc.get("fields")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: fields", "an object vital needs a table of fields")
    fields: dict[str, FieldSpec] = {}
    for name, f in raw.items():
        where = f"{source}: fields.{name}"
        if not isinstance(f, dict) or set(f) - {"range", "required"}:
            raise ConfigError(where, "must be a table with range and optional required")
        low, high = _range(f.get("range"), f"{where}.range")
        required = f.get("required", True)
        if not isinstance(required, bool):
            raise ConfigError(f"{where}.required", "must be true or false")
        fields[name] = FieldSpec(low, high, required)
    ordered = doc.get("ordered", [])
    if not isinstance(ordered, list) or any(o not in fields for o in ordered):
        raise ConfigError(f"{source}: ordered", f"must list field names among {sorted(fields)}")
    primary = doc.get("primary", next(iter(fields)))
    if not isinstance(primary, str) or primary not in fields:
        raise ConfigError(f"{source}: primary", f"must be one of {sorted(fields)}")
    return {"fields": fields, "ordered": tuple(ordered), "primary": primary}


class PipelineRegistry:
    """The set of vital kinds this daemon accepts, looked up by vital name."""

    def __init__(self, specs: Iterable[PipelineSpec]) -> None:
        self._specs: dict[str, PipelineSpec] = {}
        for spec in specs:
            if spec.vital in self._specs:
                raise ConfigError(f"pipelines: {spec.vital}", "defined twice")
            self._specs[spec.vital] = spec

    @classmethod
    def from_texts(cls, texts: Mapping[str, str]) -> PipelineRegistry:
        """Build from ``{source name: TOML text}``; a file's stem must equal its vital."""
        specs = []
        for source, text in sorted(texts.items()):
            spec = parse_pipeline(text, source)
            stem = source.rsplit("/", 1)[-1].removesuffix(".toml")
            if stem != spec.vital:
                raise ConfigError(f"{source}: vital", f"must equal the file name {stem!r}")
            specs.append(spec)
        return cls(specs)

    def get(self, vital: str) -> PipelineSpec | None:
        return self._specs.get(vital)

    def __getitem__(self, vital: str) -> PipelineSpec:
        return self._specs[vital]

    def __contains__(self, vital: object) -> bool:
        return vital in self._specs

    def __iter__(self) -> Iterator[PipelineSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def vitals(self) -> tuple[str, ...]:
        return tuple(self._specs)

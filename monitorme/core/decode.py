"""Turn one raw MQTT message into a validated ``Reading`` or raise an ``InputError``.

Reason slugs (the metric label and dead-letter ``reason``) are stable:
``payload_too_large``, ``not_utf8``, ``not_json``, ``not_finite``, ``not_object``,
``bad_topic``, ``wrong_ward``, ``unknown_vital``, ``missing_field``, ``bad_timestamp``,
``ts_in_future``, ``ts_too_old``, ``wrong_type``, ``bad_unit``, ``bad_shape``,
``out_of_range``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

import numpy as np
import orjson

from monitorme.core.definitions import PipelineRegistry, PipelineSpec, ValueKind
from monitorme.core.model import PatientId, RawMessage, Reading, Waveform
from monitorme.errors import DecodeError, ValidationError, quote

TOPIC_ROOT = "monitorme"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NON_FINITE = re.compile(rb"\b(NaN|-?Infinity)\b|\d[eE]\+?\d{3,}")
_NUMBER_TYPES = (int, float)
_HOUR_MS = 3_600_000

REASONS: tuple[str, ...] = (
    "payload_too_large", "not_utf8", "not_json", "not_finite", "not_object", "bad_topic",
    "wrong_ward", "unknown_vital", "missing_field", "bad_timestamp", "ts_in_future",
    "ts_too_old", "wrong_type", "bad_unit", "bad_shape", "out_of_range",
)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """How far a reading may stray from the wall clock, and how big it may be."""

    max_payload_bytes: int = 65_536
    max_future_ms: int = 5 * 60_000  # device clocks drift; beyond this the ts is wrong
    max_age_ms: int = 24 * _HOUR_MS  # CONTRACT.md §2: up to 24 h old is accepted


def parse_topic(topic: str, ward: str) -> tuple[PatientId, str]:
    """Split ``monitorme/{ward}/{patient}/{vital}``.

    >>> parse_topic("monitorme/w1/p7/spo2", "w1")
    ('p7', 'spo2')
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT:
        raise DecodeError("bad_topic", f"topic {quote(topic)} is not monitorme/ward/patient/vital")
    if parts[1] != ward:
        raise ValidationError("wrong_ward", f"topic {quote(topic)} is not for ward {ward!r}")
    if not ID_PATTERN.match(parts[2]):
        raise DecodeError("bad_topic", f"patient id {quote(parts[2])} must match {ID_PATTERN.pattern}")
    return PatientId(parts[2]), parts[3]


def parse_ts(raw: object) -> int:
    """Epoch milliseconds from an int, or from an RFC 3339 string with an offset.

    >>> parse_ts("2026-12-03T14:00:00.250+01:00")
    1796302800250
    """
    if type(raw) is int:
        return raw
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise DecodeError("bad_timestamp", f"ts {quote(raw)} is not RFC 3339") from None
        if parsed.tzinfo is None or ("T" not in raw.upper() and " " not in raw):
            raise DecodeError("bad_timestamp", f"ts {quote(raw)} has no time or UTC offset")
        return round(parsed.timestamp() * 1000)
    raise DecodeError("bad_timestamp", f"ts {quote(raw)} is neither epoch ms (int) nor RFC 3339")


def _number(raw: object, what: str) -> float:
    if type(raw) not in _NUMBER_TYPES:
        raise DecodeError("wrong_type", f"{what} must be a number, got {quote(raw)}")
    value = float(raw)  # type: ignore[arg-type]
    if not math.isfinite(value):
        raise DecodeError("not_finite", f"{what} is not finite")
    return value


def _in_range(value: float, low: float, high: float, what: str, unit: str) -> None:
    if not low <= value <= high:
        raise ValidationError(
            "out_of_range", f"{what} {value:g} {unit} outside possible range [{low:g}, {high:g}]"
        )


def decode_value(spec: PipelineSpec, raw: object, unit: object) -> float | dict[str, float] | str | Waveform:
    """Check a payload's ``value`` (and ``unit``) against its vital's spec; convert units.

    >>> from monitorme.core.definitions import parse_pipeline
    >>> t = parse_pipeline('vital="temperature"\\nvalue="number"\\nunit="Cel"\\nperiod_s=300\\n'
    ...     'range=[20, 46]\\n[units.F]\\nscale=0.5555555555555556\\noffset=-17.77777777777778', "t")
    >>> round(decode_value(t, 98.6, "F"), 2)
    37.0
    """
    kind = spec.kind
    if kind is ValueKind.NUMBER:
        value = _number(raw, spec.vital)
        if unit is not None and unit != spec.unit:
            conversion = spec.units.get(unit) if isinstance(unit, str) else None
            if conversion is None:
                accepted = ", ".join([spec.unit or "(none)", *spec.units])
                raise ValidationError("bad_unit", f"unit {quote(unit)} not accepted for {spec.vital} ({accepted})")
            value = conversion.apply(value)
        _in_range(value, spec.low, spec.high, spec.vital, spec.unit)
        return value
    if unit is not None and unit != spec.unit:
        raise ValidationError("bad_unit", f"unit {quote(unit)} not accepted for {spec.vital}")
    if kind is ValueKind.OBJECT:
        return _decode_object(spec, raw)
    if kind is ValueKind.ENUM:
        if not isinstance(raw, str):
            raise DecodeError("wrong_type", f"{spec.vital} must be a string, got {quote(raw)}")
        if raw not in spec.choices:
            raise DecodeError("bad_shape", f"{spec.vital} {quote(raw)} not one of {list(spec.choices)}")
        return raw
    return _decode_waveform(spec, raw)


def _decode_object(spec: PipelineSpec, raw: object) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise DecodeError("bad_shape", f"{spec.vital} must be an object, got {quote(raw)}")
    extra = raw.keys() - spec.fields.keys()
    if extra:
        raise DecodeError("bad_shape", f"{spec.vital} has unknown field {quote(sorted(extra)[0])}")
    out: dict[str, float] = {}
    for name, field in spec.fields.items():
        if name not in raw:
            if field.required:
                raise DecodeError("bad_shape", f"{spec.vital} lacks {name!r}")
            continue
        value = _number(raw[name], f"{spec.vital}.{name}")
        _in_range(value, field.low, field.high, f"{spec.vital}.{name}", spec.unit)
        out[name] = value
    present = [out[name] for name in spec.ordered if name in out]
    if any(a > b for a, b in pairwise(present)):
        order = " <= ".join(spec.ordered)
        raise ValidationError("out_of_range", f"{spec.vital} must satisfy {order}, got {quote(raw)}")
    return out


def _decode_waveform(spec: PipelineSpec, raw: object) -> Waveform:
    if not isinstance(raw, dict) or set(raw) != {"hz", "samples"}:
        raise DecodeError("bad_shape", f"{spec.vital} must be {{hz, samples}}, got {quote(raw)}")
    hz = _number(raw["hz"], f"{spec.vital}.hz")
    if not spec.hz_low <= hz <= spec.hz_high:
        raise ValidationError("out_of_range", f"{spec.vital}.hz {hz:g} outside [{spec.hz_low:g}, {spec.hz_high:g}]")
    samples = raw["samples"]
    if not isinstance(samples, list) or not samples:
        raise DecodeError("bad_shape", f"{spec.vital}.samples must be a non-empty list")
    if len(samples) > spec.max_samples:
        raise ValidationError("bad_shape", f"{spec.vital} has {len(samples)} samples, max {spec.max_samples}")
    if not set(map(type, samples)) <= {int, float}:
        raise DecodeError("wrong_type", f"{spec.vital}.samples must all be numbers")
    array = np.asarray(samples, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    if low < spec.low or high > spec.high:
        bad = low if low < spec.low else high
        _in_range(bad, spec.low, spec.high, f"{spec.vital} sample", spec.unit)
    return Waveform(hz=hz, samples=array.astype("<f4").tobytes())


def decode_reading(
    message: RawMessage,
    ward: str,
    registry: PipelineRegistry,
    now_ms: int,
    limits: DecodeLimits = DecodeLimits(),
) -> Reading:
    """Decode and validate one message.

    Args:
        message: the raw MQTT message.
        ward: the ward this daemon serves; other wards' topics are refused.
        registry: the vital kinds defined in ``pipelines/``.
        now_ms: wall-clock time, only to refuse timestamps far in the future or past.
        limits: size and time bounds.

    Returns:
        The reading, values in the stored unit.

    Raises:
        DecodeError, ValidationError: with a stable ``reason``.
    """
    payload = message.payload
    if len(payload) > limits.max_payload_bytes:
        raise ValidationError("payload_too_large", f"{len(payload)} bytes > {limits.max_payload_bytes}")
    patient, vital = parse_topic(message.topic, ward)
    spec = registry.get(vital)
    if spec is None:
        raise ValidationError("unknown_vital", f"vital {quote(vital)} has no pipeline ({', '.join(registry.vitals)})")
    doc = _loads(payload)
    if "ts" not in doc or "value" not in doc:
        missing = "ts" if "ts" not in doc else "value"
        raise DecodeError("missing_field", f"payload has no {missing!r}")
    ts_ms = parse_ts(doc["ts"])
    if ts_ms > now_ms + limits.max_future_ms:
        raise ValidationError("ts_in_future", f"ts {ts_ms} is {(ts_ms - now_ms) / 1000:.0f} s ahead of the clock")
    if ts_ms < now_ms - limits.max_age_ms:
        hint = " (seconds instead of milliseconds?)" if 0 < ts_ms < 10**11 else ""
        raise ValidationError("ts_too_old", f"ts {ts_ms} is older than {limits.max_age_ms // _HOUR_MS} h{hint}")
    value = decode_value(spec, doc["value"], doc.get("unit"))
    seq = doc.get("seq")
    if seq is not None and type(seq) is not int:
        raise DecodeError("wrong_type", f"seq must be an integer, got {quote(seq)}")
    device = doc.get("device")
    if device is not None and (not isinstance(device, str) or len(device) > 128 or "\x00" in device):
        # PostgreSQL text cannot hold NUL; one such row would poison a whole COPY batch.
        raise DecodeError("wrong_type", f"device must be a string of at most 128 characters, got {quote(device)}")
    return Reading(patient, vital, ts_ms, value, device, seq, message.received_ms)


def _loads(payload: bytes) -> dict[str, object]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("not_utf8", "payload is not UTF-8") from None
        if _NON_FINITE.search(payload):
            raise DecodeError("not_finite", "payload holds NaN or Infinity") from None
        raise DecodeError("not_json", f"payload is not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise DecodeError("not_object", f"payload must be a JSON object, got {type(doc).__name__}")
    return doc

"""Decoder examples: each CONTRACT.md §2 form accepted, each kind of bad input refused with its reason."""

from __future__ import annotations

import orjson
import pytest

from monitorme.config import load_pipelines
from monitorme.core.decode import DecodeLimits, decode_reading
from monitorme.core.model import RawMessage, Waveform
from monitorme.errors import InputError

NOW = 1_796_306_400_000
REG = load_pipelines()


def decode(vital: str, doc: object, *, raw: bytes | None = None, patient: str = "p1", ward: str = "w1"):
    payload = raw if raw is not None else orjson.dumps(doc)
    return decode_reading(RawMessage(f"monitorme/{ward}/{patient}/{vital}", payload, NOW), "w1", REG, NOW)


def reason(vital: str, doc: object = None, **kw: object) -> str:
    with pytest.raises(InputError) as info:
        decode(vital, doc, **kw)  # type: ignore[arg-type]
    return info.value.reason


def test_all_eight_vitals_are_defined() -> None:
    assert set(REG.vitals) == {"heart_rate", "blood_pressure", "spo2", "glucose", "respiration",
                               "ecg", "temperature", "sleep"}


def test_number_with_epoch_ms() -> None:
    r = decode("heart_rate", {"ts": NOW, "value": 72, "seq": 5, "device": "mon-3"})
    assert (r.patient, r.vital, r.ts_ms, r.value, r.seq, r.device) == ("p1", "heart_rate", NOW, 72.0, 5, "mon-3")


def test_rfc3339_with_offset_equals_epoch_ms() -> None:
    r = decode("spo2", {"ts": "2026-12-03T15:00:00.000+01:00", "value": 97})
    assert r.ts_ms == NOW


def test_fahrenheit_stored_as_celsius() -> None:
    assert decode("temperature", {"ts": NOW, "value": 100.4, "unit": "F"}).value == pytest.approx(38.0)


def test_mmol_per_litre_stored_as_mg_per_dl() -> None:
    assert decode("glucose", {"ts": NOW, "value": 3.9, "unit": "mmol/L"}).value == pytest.approx(70.2)


def test_the_stored_unit_may_be_named() -> None:
    assert decode("glucose", {"ts": NOW, "value": 99, "unit": "mg/dL"}).value == 99.0


def test_blood_pressure_object() -> None:
    r = decode("blood_pressure", {"ts": NOW, "value": {"systolic": 120, "diastolic": 80, "mean": 93}})
    assert r.value == {"systolic": 120.0, "diastolic": 80.0, "mean": 93.0}


def test_ecg_chunk_packed_as_float32() -> None:
    r = decode("ecg", {"ts": NOW, "value": {"hz": 250, "samples": [0.5, -0.25, 1.0]}})
    assert isinstance(r.value, Waveform)
    assert (r.value.hz, r.value.count, len(r.value.samples)) == (250.0, 3, 12)


def test_sleep_state() -> None:
    assert decode("sleep", {"ts": NOW, "value": "asleep"}).value == "asleep"


@pytest.mark.parametrize(
    ("vital", "doc", "raw", "expected"),
    [
        ("heart_rate", None, b'{"ts": 1,', "not_json"),
        ("heart_rate", None, b"\xff\xfe{}", "not_utf8"),
        ("heart_rate", None, b'{"ts": 1796306400000, "value": NaN}', "not_finite"),
        ("heart_rate", None, b'{"ts": 1796306400000, "value": 1e999}', "not_finite"),
        ("heart_rate", [1, 2], None, "not_object"),
        ("blood_ketones", {"ts": NOW, "value": 1}, None, "unknown_vital"),
        ("heart_rate", {"ts": NOW}, None, "missing_field"),
        ("heart_rate", {"value": 70}, None, "missing_field"),
        ("heart_rate", {"ts": "yesterday", "value": 70}, None, "bad_timestamp"),
        ("heart_rate", {"ts": True, "value": 70}, None, "bad_timestamp"),
        ("heart_rate", {"ts": 1.5e12, "value": 70}, None, "bad_timestamp"),
        ("heart_rate", {"ts": "2026-12-03T14:00:00", "value": 70}, None, "bad_timestamp"),
        ("heart_rate", {"ts": NOW + 10 * 86_400_000, "value": 70}, None, "ts_in_future"),
        ("heart_rate", {"ts": NOW - 25 * 3_600_000, "value": 70}, None, "ts_too_old"),
        ("heart_rate", {"ts": NOW // 1000, "value": 70}, None, "ts_too_old"),
        ("heart_rate", {"ts": NOW, "value": "fast"}, None, "wrong_type"),
        ("heart_rate", {"ts": NOW, "value": True}, None, "wrong_type"),
        ("heart_rate", {"ts": NOW, "value": 900}, None, "out_of_range"),
        ("spo2", {"ts": NOW, "value": 140}, None, "out_of_range"),
        ("temperature", {"ts": NOW, "value": 80}, None, "out_of_range"),
        ("temperature", {"ts": NOW, "value": 310, "unit": "K"}, None, "bad_unit"),
        ("blood_pressure", {"ts": NOW, "value": {"systolic": 120}}, None, "bad_shape"),
        ("blood_pressure", {"ts": NOW, "value": {"systolic": 70, "diastolic": 80}}, None, "out_of_range"),
        ("blood_pressure", {"ts": NOW, "value": 120}, None, "bad_shape"),
        ("ecg", {"ts": NOW, "value": {"hz": 250, "samples": "flat"}}, None, "bad_shape"),
        ("ecg", {"ts": NOW, "value": {"hz": 250, "samples": [0.1, "x"]}}, None, "wrong_type"),
        ("ecg", {"ts": NOW, "value": {"hz": 250, "samples": [0.1, 99]}}, None, "out_of_range"),
        ("ecg", {"ts": NOW, "value": {"hz": 250, "samples": [0.0] * 5000}}, None, "bad_shape"),
        ("sleep", {"ts": NOW, "value": "dozing"}, None, "bad_shape"),
        ("heart_rate", {"ts": NOW, "value": 70, "seq": "7"}, None, "wrong_type"),
        ("heart_rate", {"ts": NOW, "value": 70, "device": 12}, None, "wrong_type"),
        ("heart_rate", {"ts": NOW, "value": 70, "device": "a\x00b"}, None, "wrong_type"),
    ],
)
def test_rejections_carry_a_stable_reason(vital: str, doc: object, raw: bytes | None, expected: str) -> None:
    assert reason(vital, doc, raw=raw) == expected


@pytest.mark.parametrize("topic", [
    "monitorme/w1/p1/heart_rate/extra", "monitorme/w1/bad id/heart_rate", "other/w1/p1/heart_rate",
    "monitorme/w1/" + "p" * 65 + "/heart_rate",
])
def test_bad_topics(topic: str) -> None:
    with pytest.raises(InputError) as info:
        decode_reading(RawMessage(topic, b'{"ts": 1796306400000, "value": 70}', NOW), "w1", REG, NOW)
    assert info.value.reason == "bad_topic"


def test_other_wards_topics_are_refused() -> None:
    assert reason("heart_rate", {"ts": NOW, "value": 70}, ward="w2") == "wrong_ward"


def test_oversize_payload_refused_before_parsing() -> None:
    big = b'{"ts": 1796306400000, "value": 70, "pad": "' + b"x" * 70_000 + b'"}'
    assert reason("heart_rate", raw=big) == "payload_too_large"


def test_limits_are_configurable() -> None:
    msg = RawMessage("monitorme/w1/p1/heart_rate", orjson.dumps({"ts": NOW + 120_000, "value": 70}), NOW)
    strict = DecodeLimits(max_future_ms=60_000)
    with pytest.raises(InputError):
        decode_reading(msg, "w1", REG, NOW, strict)
    assert decode_reading(msg, "w1", REG, NOW).ts_ms == NOW + 120_000

"""Decoder properties: any bytes raise only InputError; every valid payload round-trips."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from monitorme.config import load_pipelines
from monitorme.core.decode import REASONS, decode_reading, parse_ts
from monitorme.core.definitions import ValueKind
from monitorme.core.model import RawMessage, Waveform
from monitorme.errors import InputError
from tests.strategies import NOW_MS, payloads_for, rfc3339, timestamps_ms

REG = load_pipelines()
vitals = st.sampled_from(REG.vitals)
topic_parts = st.text(st.characters(codec="utf-8"), max_size=20)


@given(payload=st.binary(max_size=2_000), vital=vitals)
def test_arbitrary_bytes_raise_only_input_error_with_a_known_reason(payload: bytes, vital: str) -> None:
    msg = RawMessage(f"monitorme/w1/p1/{vital}", payload, NOW_MS)
    try:
        decode_reading(msg, "w1", REG, NOW_MS)
    except InputError as exc:
        assert exc.reason in REASONS
        assert exc.detail


KEYS = st.sampled_from(["ts", "value", "unit", "seq", "device", "hz", "samples", "systolic", "diastolic"])
json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=20,
)


@given(doc=json_docs, vital=vitals)
def test_arbitrary_json_raises_only_input_error(doc: Any, vital: str) -> None:
    try:
        payload = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        decode_reading(RawMessage(f"monitorme/w1/p1/{vital}", payload, NOW_MS), "w1", REG, NOW_MS)
    except InputError as exc:
        assert exc.reason in REASONS


@given(a=topic_parts, b=topic_parts, c=topic_parts)
def test_arbitrary_topics_raise_only_input_error(a: str, b: str, c: str) -> None:
    topic = f"{a}/{b}/{c}"
    try:
        decode_reading(RawMessage(topic, b'{"ts": 1796306400000, "value": 70}', NOW_MS), "w1", REG, NOW_MS)
    except InputError as exc:
        assert exc.reason in REASONS


@given(data=st.data(), vital=vitals)
def test_valid_payloads_round_trip(data: st.DataObject, vital: str) -> None:
    spec = REG[vital]
    doc = data.draw(payloads_for(spec))
    reading = decode_reading(RawMessage(f"monitorme/w1/p9/{vital}", orjson.dumps(doc), NOW_MS), "w1", REG, NOW_MS)
    assert (reading.patient, reading.vital) == ("p9", vital)
    assert reading.ts_ms == parse_ts(doc["ts"])
    assert reading.seq == doc.get("seq")
    value = doc["value"]
    if spec.kind is ValueKind.WAVEFORM:
        assert isinstance(reading.value, Waveform)
        assert reading.value.hz == value["hz"]
        assert np.frombuffer(reading.value.samples, "<f4").tolist() == value["samples"]
    elif spec.kind is ValueKind.OBJECT:
        assert reading.value == {k: float(v) for k, v in value.items()}
    else:
        assert reading.value == value


@given(ts=timestamps_ms, data=st.data())
def test_rfc3339_and_epoch_ms_agree(ts: int, data: st.DataObject) -> None:
    assert parse_ts(data.draw(rfc3339(ts))) == ts


@given(celsius=st.floats(min_value=20, max_value=46))
def test_fahrenheit_converts_exactly_enough(celsius: float) -> None:
    fahrenheit = celsius * 9 / 5 + 32
    payload = orjson.dumps({"ts": NOW_MS, "value": fahrenheit, "unit": "F"})
    msg = RawMessage("monitorme/w1/p1/temperature", payload, NOW_MS)
    try:
        stored = decode_reading(msg, "w1", REG, NOW_MS).value
    except InputError as exc:  # right at the range edge, float rounding may step outside
        assert exc.reason == "out_of_range"
        return
    assert isinstance(stored, float)
    assert math.isclose(stored, celsius, abs_tol=1e-9)

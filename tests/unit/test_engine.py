"""Engine: batches in, readings/rejections/duplicates/admissions out; bad input never stops a batch."""

from __future__ import annotations

import orjson

from monitorme.config import load_pipelines
from monitorme.core.engine import Engine, EngineConfig
from monitorme.core.model import RawMessage

NOW = 1_796_306_400_000
REG = load_pipelines()


def msg(patient: str, vital: str, doc: object, raw: bytes | None = None) -> RawMessage:
    return RawMessage(f"monitorme/w1/{patient}/{vital}", raw if raw is not None else orjson.dumps(doc), NOW)


def test_bad_messages_are_rejected_while_the_rest_of_the_batch_goes_on() -> None:
    engine = Engine(EngineConfig("w1", dead_letter_bytes=8), REG)
    batch = [
        msg("p1", "heart_rate", {"ts": NOW, "value": 70}),
        msg("p1", "heart_rate", None, raw=b"not json at all"),
        msg("p2", "spo2", {"ts": NOW, "value": 97}),
        msg("p2", "spo2", {"ts": NOW + 1, "value": 400}),
    ]
    out = engine.handle(batch, NOW)
    assert [(r.patient, r.vital) for r in out.readings] == [("p1", "heart_rate"), ("p2", "spo2")]
    assert [j.reason for j in out.rejections] == ["not_json", "out_of_range"]
    assert out.rejections[0].payload == b"not json"  # truncated to the configured size
    assert out.rejections[0].payload_size == len(b"not json at all")


def test_duplicates_by_seq_and_by_ts_are_dropped_once_seen() -> None:
    engine = Engine(EngineConfig("w1"), REG)
    with_seq = msg("p1", "heart_rate", {"ts": NOW, "value": 70, "seq": 1, "device": "d"})
    without_seq = msg("p1", "spo2", {"ts": NOW, "value": 97})
    first = engine.handle([with_seq, without_seq], NOW)
    again = engine.handle([with_seq, without_seq, with_seq], NOW)
    assert (len(first.readings), first.duplicates) == (2, 0)
    assert (len(again.readings), again.duplicates) == (0, 3)


def test_same_ts_with_a_different_seq_is_a_different_reading() -> None:
    engine = Engine(EngineConfig("w1"), REG)
    out = engine.handle([
        msg("p1", "heart_rate", {"ts": NOW, "value": 70, "seq": 1, "device": "d"}),
        msg("p1", "heart_rate", {"ts": NOW, "value": 71, "seq": 2, "device": "d"}),
    ], NOW)
    assert len(out.readings) == 2


def test_new_patients_are_admitted_once() -> None:
    engine = Engine(EngineConfig("w1"), REG, known_patients=["p1"])
    out = engine.handle([
        msg("p1", "heart_rate", {"ts": NOW, "value": 70}),
        msg("p2", "heart_rate", {"ts": NOW, "value": 70}),
        msg("p2", "spo2", {"ts": NOW, "value": 97}),
    ], NOW)
    assert out.admitted == ["p2"]
    assert engine.handle([msg("p2", "heart_rate", {"ts": NOW + 1, "value": 70})], NOW).admitted == []


def test_dedup_memory_is_bounded_per_key() -> None:
    engine = Engine(EngineConfig("w1"), REG)
    engine.handle([msg("p1", "heart_rate", {"ts": NOW - i, "value": 70}) for i in range(1000)], NOW)
    keys = engine._recent[("p1", "heart_rate")]
    assert len(keys.seen) == len(keys.order) <= 128


def test_evict_forgets_a_patient() -> None:
    engine = Engine(EngineConfig("w1"), REG)
    engine.handle([msg("p1", "heart_rate", {"ts": NOW, "value": 70})], NOW)
    engine.evict("p1")
    assert "p1" not in engine.patients
    assert engine.handle([msg("p1", "heart_rate", {"ts": NOW, "value": 70})], NOW).admitted == ["p1"]


def test_warm_up_fills_windows_and_dedup_and_returns_only_alerts_not_restored() -> None:
    from monitorme.config import load_rules
    from monitorme.core.model import PatientId, Reading

    rules = load_rules(REG)
    engine = Engine(EngineConfig("w1"), REG, rules=rules)
    stored = [Reading(PatientId("p1"), "spo2", NOW - 30_000 + i * 5000, 86.0, "ox", i) for i in range(6)]
    out = engine.warm_up(stored, NOW)
    assert [a.rule for a in out.alerts] == ["spo2_low"]  # open after the replay, never stored: to be sent
    again = engine.handle([msg("p1", "spo2", {"ts": NOW - 5000, "value": 86, "device": "ox", "seq": 5})], NOW)
    assert again.duplicates == 1 and again.readings == []  # the redelivered copy of a stored reading

    restarted = Engine(EngineConfig("w1"), REG, rules=rules)
    restarted.analyzer.restore_alert(out.alerts[0])  # what a restart finds open in PostgreSQL
    assert restarted.warm_up(stored, NOW).alerts == []  # restored: not sent again
    fresh = restarted.handle([msg("p1", "spo2", {"ts": NOW, "value": 86})], NOW)
    assert fresh.alerts == []  # and the condition, still on, is not raised twice

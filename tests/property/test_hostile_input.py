"""Hostile input in the middle of a ward's stream: each bad message is rejected with a reason, early,
and every good message around it still gets through, in the same batch."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from monitorme.config import load_pipelines
from monitorme.core.decode import REASONS, DecodeLimits
from monitorme.core.engine import Engine, EngineConfig
from monitorme.core.model import RawMessage
from tests.strategies import NOW_MS

REG = load_pipelines()
DEEP = b"[" * 200_000 + b"]" * 200_000  # far past orjson's nesting limit and the size limit
NESTED = b'{"ts": 1, "value": ' + b'{"a": ' * 600 + b"1" + b"}" * 600 + b"}"
HOSTILE = [
    ("monitorme/w1/p9/heart_rate", DEEP),
    ("monitorme/w1/p9/heart_rate", NESTED),
    ("monitorme/w1/p9/ecg", orjson.dumps({"ts": NOW_MS, "value": {"hz": 250, "samples": [1.0] * 6000}})),
    ("monitorme/w1/p9/ecg", orjson.dumps({"ts": NOW_MS, "value": {"hz": 1e308, "samples": [1.0]}})),
    ("monitorme/w1/p\u202e9/heart_rate", b'{"ts": 1, "value": 70}'),  # right-to-left override in an id
    ("monitorme/w1/p9/\u0000", b'{"ts": 1, "value": 70}'),
    ("monitorme/w1/p9/heart_rate", '{"ts": 1, "value": "\ud800"}'.encode("utf-8", "surrogatepass")),
    ("monitorme/w1/p9/heart_rate", b'{"ts": 1e400, "value": 70}'),
    ("monitorme/w1/p9/heart_rate", b'{"ts": ' + b"9" * 5000 + b', "value": 70}'),
    ("monitorme/w1/p9/heart_rate", orjson.dumps({"ts": NOW_MS, "value": 70, "device": "d" * 10_000})),
]


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(len(HOSTILE) + 20)))
def test_hostile_messages_are_rejected_and_good_ones_pass(order: list[int]) -> None:
    good = [RawMessage(f"monitorme/w1/p{i}/heart_rate", orjson.dumps({"ts": NOW_MS - 1000 * i, "value": 70 + i}),
                       NOW_MS) for i in range(20)]
    bad = [RawMessage(t, p, NOW_MS) for t, p in HOSTILE]
    everything = bad + good
    batch = [everything[i] for i in order]
    engine = Engine(EngineConfig("w1", DecodeLimits()), REG)
    out = engine.handle(batch, NOW_MS)
    assert sorted(r.patient for r in out.readings) == sorted(f"p{i}" for i in range(20))
    assert len(out.rejections) == len(HOSTILE)
    assert {j.reason for j in out.rejections} <= set(REASONS)
    assert all(len(j.payload) <= 4096 and j.detail for j in out.rejections)  # kept, truncated, explained

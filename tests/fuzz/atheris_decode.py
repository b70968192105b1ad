"""Coverage-guided fuzzing (atheris, libFuzzer) of the MQTT message decoder.

    python -m tests.fuzz.atheris_decode -atheris_runs=2000000 [-max_total_time=600] [corpus_dir]

Each input becomes one message: the first byte picks the vital (or a topic made of fuzzer bytes),
the rest is the payload. ``decode_reading`` must either return a reading whose value passes its
pipeline's range, or raise ``InputError`` with a reason from ``REASONS`` and a detail; anything
else (another exception, a crash, a hang, memory past libFuzzer's -rss_limit_mb) is a finding.
Seeds are valid payloads of every vital, so mutations start from deep inside the decoder.
tests/fuzz/test_atheris_smoke.py runs this for a few thousand inputs in CI.
"""

from __future__ import annotations

import math
import sys

import atheris
import orjson

with atheris.instrument_imports(include=["monitorme"]):
    from monitorme.config import load_pipelines
    from monitorme.core.decode import REASONS, decode_reading
    from monitorme.core.model import RawMessage, Waveform
    from monitorme.errors import InputError

REG = load_pipelines()
VITALS = list(REG.vitals)
NOW_MS = 1_796_306_400_000


def seeds() -> list[bytes]:
    """One valid payload per vital, prefixed with the vital's selector byte."""
    values: dict[str, object] = {
        "ecg": {"hz": 250, "samples": [0.1, 0.5, 1.2, 0.2] * 8},
        "blood_pressure": {"systolic": 120, "diastolic": 80},
        "sleep": "asleep",
        "temperature": 37.0,
        "spo2": 97.0,
        "respiration": 16.0,
        "glucose": 95.0,
    }
    out = []
    for i, vital in enumerate(VITALS):
        doc = {"ts": NOW_MS - 1000, "value": values.get(vital, 70.0), "seq": 7, "device": "d1"}
        out.append(bytes([i]) + orjson.dumps(doc))
    return out


def check(data: bytes) -> None:
    if not data:
        return
    selector, payload = data[0], data[1:]
    if selector < len(VITALS):
        topic = f"monitorme/w1/p1/{VITALS[selector]}"
    else:  # a topic from the fuzzer's bytes too: odd separators, unicode, wildcards
        cut = payload.find(b"\n")
        raw_topic, payload = (payload[:cut], payload[cut + 1:]) if cut >= 0 else (payload[:40], payload[40:])
        topic = "monitorme/w1/" + raw_topic.decode("utf-8", "replace")
    try:
        reading = decode_reading(RawMessage(topic, payload, NOW_MS), "w1", REG, NOW_MS)
    except InputError as exc:
        if exc.reason not in REASONS or not exc.detail:
            raise AssertionError(f"unexplained rejection {exc.reason!r}: {exc.detail!r}") from None
        return
    spec = REG.get(reading.vital)
    assert spec is not None, reading.vital
    value = reading.value
    if isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, Waveform):
        assert value.hz > 0 and len(value.samples) > 0, value


def main(argv: list[str]) -> None:
    import os
    import tempfile

    corpus = tempfile.mkdtemp(prefix="monitorme-fuzz-seeds-")
    for i, seed in enumerate(seeds()):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(seed)
    atheris.Setup([*argv, corpus], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

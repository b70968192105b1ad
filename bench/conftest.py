"""Shared inputs for the micro-benchmarks in ``bench/`` (run with ``pytest bench --benchmark-only``)."""

from __future__ import annotations

import time

import pytest

from monitorme.config import load_pipelines
from monitorme.core.definitions import PipelineRegistry
from monitorme.core.model import RawMessage
from monitorme.sim.model import generate_ward

WARD = "bench"


@pytest.fixture(scope="session")
def ward() -> str:
    """The ward every benchmark message belongs to."""
    return WARD


@pytest.fixture(scope="session")
def now_ms() -> int:
    """The wall clock the decoder checks timestamps against, fixed for the session."""
    return int(time.time() * 1000)


@pytest.fixture(scope="session")
def registry() -> PipelineRegistry:
    """The vital definitions shipped in ``pipelines/``."""
    return load_pipelines()


@pytest.fixture(scope="session")
def hospital_mix(now_ms: int) -> list[RawMessage]:
    """30 s of a 500-patient ward in steady state (every device, ECG included), as received.

    The first 2 s are left out: every device reports once in them, so they over-represent the
    slow vitals (blood pressure hourly, temperature every 5 min) relative to a running ward.
    """
    start_ms = now_ms - 60_000
    return [
        RawMessage(m.topic, m.payload, now_ms)
        for m in generate_ward(WARD, 500, start_ms, 30.0, seed=1)
        if m.ts_ms >= start_ms + 2_000
    ]

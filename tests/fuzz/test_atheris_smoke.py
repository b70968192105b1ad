"""The atheris decoder fuzzer at a small budget (CI); run it by hand for millions of inputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")
REPO = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("ATHERIS_RUNS", "30000"))


def test_decoder_survives_coverage_guided_fuzzing() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.atheris_decode", f"-atheris_runs={RUNS}", "-rss_limit_mb=1024",
         "-timeout=10", "-seed=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = re.search(r"Done (\d+) in", proc.stderr)
    assert done and int(done.group(1)) >= RUNS, proc.stderr[-1000:]
    coverage = re.findall(r"cov: (\d+)", proc.stderr)
    assert coverage and int(coverage[-1]) > 50, "the decoder was not reached"  # instrumented edges seen

"""The operator core alone (windows + rules, no I/O) beside a naive per-reading Python loop and a
bytewax dataflow of the same windows and thresholds, on the same pre-decoded readings, in one run.

    python -m bench.operator_core [--patients 500] [--seconds 120] [--batch 10000] [--runs 3] [--json ...]

The comparison rules are the subset all three implement identically: spo2_low (< 90 % for 15 s),
hr_low (< 50 for 30 s), hr_high (> 120 for 30 s), rr_high (>= 25 for 60 s), each clearing with its
hysteresis, and spo2_falling (newest >= 4 points under the 10-min median, still >= 90 %, for 60 s).
Every implementation must raise the same alerts (checked), so the rates compare equal work.
MonitorMe's full default rule set (with NEWS2 and the ECG detector) is timed as a further row.

Batching, kept fair: every implementation gets the same time-ordered readings. MonitorMe gets them in
batches of ``BATCH`` (10,000) readings, its ``Analyzer.on_readings`` calls, so that large batches take
the batch pass (quiet readings appended as arrays); bytewax's ``TestingSource`` hands its dataflow
batches of the same ``BATCH``, and, in a row of its own, of 1,000 (it runs faster so: the ratio to
bytewax is taken against the faster of its two rows); the naive loop has no batches to take. The
MonitorMe per-reading row runs the same batches with the batch pass switched off
(``analysis.BATCH_MIN``), which is what small live batches get. Every rate includes the first batch,
when all patients are new. The rows run round-robin ``--runs`` times (each on fresh state) and report
their median, so that a busy spell of the machine weighs on all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import orjson

from monitorme.config import load_pipelines, load_rules
from monitorme.core import analysis
from monitorme.core.analysis import AnalysisOutputs, Analyzer
from monitorme.core.decode import DecodeLimits
from monitorme.core.engine import Engine, EngineConfig
from monitorme.core.model import RawMessage, Reading
from monitorme.core.ruleset import RuleSet
from monitorme.sim.model import generate_ward

SUBSET = ("spo2_low", "hr_low", "hr_high", "rr_high", "spo2_falling")
SCALARS = ("heart_rate", "spo2", "respiration")
PERIOD_S = {"heart_rate": 0.5, "spo2": 5.0, "respiration": 1.0}
# (vital, compare, threshold, delay_s, hysteresis) of the threshold rules, as in rules/*.toml
THRESHOLDS = {
    "spo2_low": ("spo2", "<", 90.0, 15.0, 2.0),
    "hr_low": ("heart_rate", "<", 50.0, 30.0, 5.0),
    "hr_high": ("heart_rate", ">", 120.0, 30.0, 5.0),
    "rr_high": ("respiration", ">=", 25.0, 60.0, 2.0),
}
FALLING = ("spo2", 600_000, -4.0, 90.0, 60.0)  # vital, window, delta, floor, delay_s
BATCH = 10_000  # readings per batch, for MonitorMe and for bytewax's input alike


def readings(patients: int, seconds: float) -> list[Reading]:
    """The scalar vitals of a ward with deteriorations, decoded once, in event-time order."""
    registry = load_pipelines()
    engine = Engine(EngineConfig("b", DecodeLimits(max_age_ms=10**13, max_future_ms=10**13)), registry)
    out: list[Reading] = []
    for scenario, offset in (("desaturation", 0), ("bradycardia", 1)):
        ward = [RawMessage(m.topic.replace("/p001/", f"/x{offset}/") if offset else m.topic, m.payload, m.ts_ms)
                for m in generate_ward("b", patients if not offset else 1, 1_796_306_400_000, seconds,
                                       scenario=scenario, seed=5) if m.vital in SCALARS]
        out += engine.handle(ward, 0).readings
    out.sort(key=lambda r: r.ts_ms)
    return out


# -- 1. MonitorMe's analyzer --------------------------------------------------------
def monitorme(data: list[Reading], rules: RuleSet, news2: bool = True, batch_pass: bool = True,
              batch: int = BATCH) -> tuple[float, set[tuple[str, str, int]]]:
    analyzer = Analyzer("b", rules, score_news2=news2)
    out = AnalysisOutputs()
    before = analysis.BATCH_MIN
    analysis.BATCH_MIN = before if batch_pass else len(data) + 1
    try:
        started = time.perf_counter()
        for i in range(0, len(data), batch):
            analyzer.on_readings(data[i : i + batch], 0, out)
        seconds = time.perf_counter() - started
    finally:
        analysis.BATCH_MIN = before
    raised = {(a.patient, a.rule, a.ts) for a in out.alerts if a.state.value == "raised" and a.rule in SUBSET
              and not a.reminders}
    return seconds, raised


# -- 2. a naive per-reading loop ------------------------------------------------------
class _Rule:
    __slots__ = ("active", "since")

    def __init__(self) -> None:
        self.since: int | None = None
        self.active = False


def _step(st: _Rule, holds: bool, cleared: bool, ts: int, period_s: float, delay_s: float) -> bool:
    """The same persistence rule as monitorme.core.rules.step, written plainly; True when it raises."""
    if holds:
        if st.since is None:
            st.since = ts
        if not st.active and (ts - st.since) / 1000 + period_s >= delay_s:
            st.active = True
            return True
        return False
    st.since = None
    if st.active and cleared:
        st.active = False  # clear delay elided: these rules clear on one reading past the margin
    return False


def _compare(op: str, a: float, b: float) -> bool:
    return a < b if op == "<" else a > b if op == ">" else a >= b if op == ">=" else a <= b


def naive_step(state: dict[str, Any], r: Reading, raised: list[tuple[str, str, int]]) -> None:
    value = float(r.value)  # type: ignore[arg-type]
    window: deque[tuple[int, float]] = state.setdefault("window", deque())
    window.append((r.ts_ms, value))
    while window and window[0][0] <= r.ts_ms - FALLING[1]:
        window.popleft()
    for name, (vital, op, thr, delay, hyst) in THRESHOLDS.items():
        if vital != r.vital:
            continue
        st = state.setdefault(name, _Rule())
        holds = _compare(op, value, thr)
        cleared = value >= thr + hyst if op in ("<", "<=") else value <= thr - hyst
        if _step(st, holds, cleared, r.ts_ms, PERIOD_S[vital], delay):
            raised.append((r.patient, name, r.ts_ms))
    if r.vital == FALLING[0]:
        st = state.setdefault("spo2_falling", _Rule())
        delta = value - statistics.median(v for _, v in window)
        holds = delta <= FALLING[2] and value >= FALLING[3]
        if _step(st, holds, not holds, r.ts_ms, PERIOD_S["spo2"], FALLING[4]):
            raised.append((r.patient, "spo2_falling", r.ts_ms))


def naive(data: Iterable[Reading]) -> tuple[float, set[tuple[str, str, int]]]:
    states: dict[tuple[str, str], dict[str, Any]] = {}
    raised: list[tuple[str, str, int]] = []
    started = time.perf_counter()
    for r in data:
        naive_step(states.setdefault((r.patient, r.vital), {}), r, raised)
    return time.perf_counter() - started, set(raised)


# -- 3. bytewax ------------------------------------------------------------------------
def bytewax_run(data: list[Reading], batch: int = BATCH) -> tuple[float, set[tuple[str, str, int]]] | None:
    try:
        import bytewax.operators as op
        from bytewax.dataflow import Dataflow
        from bytewax.testing import TestingSink, TestingSource, run_main
    except ImportError:
        return None

    def mapper(state: dict[str, Any] | None, r: Reading) -> tuple[dict[str, Any], list[tuple[str, str, int]]]:
        state = state if state is not None else {}
        out: list[tuple[str, str, int]] = []
        naive_step(state, r, out)
        return state, out

    flow = Dataflow("operator_core")
    stream = op.input("readings", flow, TestingSource(data, batch_size=batch))
    keyed = op.key_on("patient_vital", stream, lambda r: f"{r.patient}/{r.vital}")
    alerts = op.stateful_map("rules", keyed, mapper)
    flat = op.flat_map("alerts", alerts, lambda kv: kv[1])
    sink: list[tuple[str, str, int]] = []
    op.output("out", flat, TestingSink(sink))
    started = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - started, set(sink)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--batch", type=int, default=BATCH, help="readings per batch (MonitorMe and bytewax)")
    parser.add_argument("--runs", type=int, default=3, help="rounds; each row reports its median time")
    parser.add_argument("--json", default="bench/results/operator_core.json")
    args = parser.parse_args(argv)
    registry = load_pipelines()
    full = load_rules(registry)
    # the subset with the clear delay the naive loop implements (one reading past the margin)
    subset = RuleSet([replace(r, clear_delay_s=0.0) for r in full.rules if r.name in SUBSET], registry)
    print(f"generating {args.patients} patients x {args.seconds:.0f} s ...", file=sys.stderr)
    data = readings(args.patients, args.seconds)
    n = len(data)
    runs: dict[str, Callable[[], tuple[float, set[tuple[str, str, int]]] | None]] = {
        "monitorme_core_subset": lambda: monitorme(data, subset, news2=False, batch=args.batch),
        "monitorme_core_subset_per_reading": lambda: monitorme(data, subset, news2=False, batch_pass=False,
                                                               batch=args.batch),
        "naive_python_loop": lambda: naive(data),
        "bytewax_dataflow": lambda: bytewax_run(data, args.batch),
        "bytewax_dataflow_batch_1000": lambda: bytewax_run(data, 1000),
        "monitorme_core_all_rules": lambda: monitorme(data, full, batch=args.batch),
    }
    times: dict[str, list[float]] = {}
    alerts: dict[str, set[tuple[str, str, int]]] = {}
    for _ in range(args.runs):  # round-robin, so that a busy spell of the machine hits every row alike
        for name, run in runs.items():
            got = run()
            if got is not None:
                times.setdefault(name, []).append(got[0])
                alerts[name] = got[1]
    ours = alerts["monitorme_core_subset"]
    for name in ("monitorme_core_subset_per_reading", "naive_python_loop", "bytewax_dataflow",
                 "bytewax_dataflow_batch_1000"):
        if name in alerts:
            assert alerts[name] == ours, f"{name} disagrees: {sorted(alerts[name] ^ ours)[:5]}"
    rows: dict[str, dict[str, Any]] = {}
    for name, seconds in times.items():
        median_s = statistics.median(seconds)
        rows[name] = {"seconds": median_s, "readings_per_s": n / median_s, "runs_s": seconds,
                      "alerts": len(alerts[name]) if name != "monitorme_core_all_rules" else None}
    report = {"patients": args.patients, "simulated_seconds": args.seconds, "readings": n,
              "alerts_in_subset": len(ours), "rows": rows,
              "ratios": {k: round(v["readings_per_s"] / rows["naive_python_loop"]["readings_per_s"], 3)
                         for k, v in rows.items()},
              "load_readings_per_s": 1610, "batch": args.batch, "runs": args.runs}
    if "bytewax_dataflow" in rows:  # against bytewax's faster batch size of the two
        fastest = max(rows["bytewax_dataflow"]["readings_per_s"], rows["bytewax_dataflow_batch_1000"]["readings_per_s"])
        report["core_vs_bytewax"] = round(rows["monitorme_core_subset"]["readings_per_s"] / fastest, 2)
    print(f"{n} scalar readings (HR, SpO2, RR) in batches of {args.batch:,}, {len(ours)} alerts in the subset, "
          f"all implementations agree; medians of {args.runs} runs")
    print(f"{'implementation':<34} {'readings/s':>12} {'x naive':>8} {'x load':>8}")
    for name, row in rows.items():
        rate = row["readings_per_s"]
        print(f"{name:<34} {rate:>12,.0f} {report['ratios'][name]:>8.2f} {rate / 1610:>8.0f}")
    if "core_vs_bytewax" in report:
        print(f"MonitorMe core (same 5 rules) / the faster bytewax row: {report['core_vs_bytewax']:.1f}x")
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

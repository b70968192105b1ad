"""Per-patient analysis: feed readings into event-time series, evaluate rules, keep alerts and NEWS2.

Pure and synchronous. Readings move windows in event time; only ``tick`` reads wall time
(no-data alerts, escalation and reminders of unacknowledged alerts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from math import inf, isfinite, nan, nextafter
from typing import Any

import numpy as np
import numpy.typing as npt

from monitorme.core.alerts import (
    AlarmPolicy,
    Alert,
    AlertKind,
    AlertState,
    Priority,
    acknowledge,
    alert_id,
    condition_cleared,
    worsened,
)
from monitorme.core.ecg import EcgAnalyzer, EcgFeatures, feed_many
from monitorme.core.features import FeatureSpec, compute
from monitorme.core.model import Reading, Waveform
from monitorme.core.rules import COMPARE, Condition, RuleSpec, RuleState, Variant, apply_override, step
from monitorme.core.ruleset import RuleSet
from monitorme.core.scores import News2, news2
from monitorme.core.window import FloatArray, Series, median

_NEWS2_INPUTS = {"heart_rate", "respiration", "spo2", "blood_pressure", "temperature"}
_NEWS2_SMOOTH = FeatureSpec("median", window_s=300)  # CLINICAL.md §1: median of the last 5 min
_SMOOTH_MS = _NEWS2_SMOOTH.window_ms
_NEWS2_EVERY_MS = 5_000  # continuous inputs re-score at most this often (the median barely moves)
_BP_MAX_AGE_MS = 2 * 3_600_000
_TEMP_MAX_AGE_MS = 30 * 60_000
_ECG_BATCH_MIN = 16  # readings in a batch before its ECG chunks are analysed together
BATCH_MIN = 256  # readings in a batch before the quiet ones are appended as arrays (``_batch_pass``)
_BATCH_USEFUL = 0.75  # at most this share of a batch left one by one, else the batch pass rests for
_BATCH_REST = 8  # batches (both paths give the very same results: this is only about speed)
_CONTINUOUS = ("heart_rate", "respiration", "spo2")
_BASELINE_OPS = ("delta_from_median", "pct_from_median")  # trend operators the batch pass can follow
EVICT_AFTER_MS = 6 * 3_600_000  # a patient silent this long with nothing open has left: free the state


def _quiet_rules(ps: PatientState, rules: tuple[RuleSpec, ...]) -> bool:
    """None of ``rules`` is active or counting for the patient."""
    for rule in rules:
        rs = ps.rule_states.get(rule.name)
        if rs is not None and (rs.active or rs.since_ts is not None):
            return False
    return True


@dataclass(frozen=True, slots=True)
class ScoreUpdate:
    """A patient's NEWS2 changed (for the station feed)."""

    patient: str
    ts: int
    score: News2


@dataclass(frozen=True, slots=True)
class Fault:
    """Analysis of one patient's vital raised unexpectedly; the rest went on."""

    patient: str
    vital: str
    error: str


@dataclass(slots=True)
class AnalysisOutputs:
    alerts: list[Alert] = field(default_factory=list)
    scores: list[ScoreUpdate] = field(default_factory=list)
    late: int = 0
    faults: list[Fault] = field(default_factory=list)


# (memo key, window ms, memo lifetime ms, delta (else percent), enabled, compare, threshold) of a baseline trend
_TrendCheck = tuple[tuple[str, int], int, int, bool, bool, Callable[[float, float], bool], float]


@dataclass(slots=True)
class PatientState:
    """Everything the analysis remembers about one patient."""

    patient: str
    station: str | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, tuple[Variant, Variant, bool]] = field(default_factory=dict)
    sleep_ts: int = -1
    asleep: bool | None = None  # None until the first sleep reading: treated as awake
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    ecg: EcgAnalyzer | None = None
    rule_states: dict[str, RuleState] = field(default_factory=dict)
    open_alerts: dict[str, Alert] = field(default_factory=dict)
    last_received_wall: dict[str, int] = field(default_factory=dict)
    last_ts: dict[str, int] = field(default_factory=dict)
    news2_ts: int = -1
    news2_total: int | None = None
    news2: News2 | None = None
    latest: dict[str, tuple[int, Any]] = field(default_factory=dict)  # vital -> (ts, value) for screens
    # per (vital, channel): (asleep, lo, hi, rules to evaluate anyway). While every ``last`` rule of
    # the channel is quiet, a value in [lo, hi] breaches none of them, so they need no evaluation
    guards: dict[tuple[str, str], tuple[bool, float, float, tuple[RuleSpec, ...]]] = field(default_factory=dict)
    # per (vital, channel): the guard its baseline-trend checks were made for, and the checks (batch pass)
    trend_checks: dict[tuple[str, str], tuple[object, list[_TrendCheck]]] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        """What a screen shows beside the vitals: sleep state, NEWS2 and open alerts."""
        score = None
        if self.news2 is not None:
            score = {"total": self.news2.total, "band": self.news2.band, "parts": self.news2.parts,
                     "partial": self.news2.partial, "missing": list(self.news2.missing), "ts": self.news2_ts}
        return {"patient_state": self.state_word, "news2": score, "open_alerts": len(self.open_alerts)}

    @property
    def state_word(self) -> str:
        return "unknown" if self.asleep is None else ("asleep" if self.asleep else "awake")


class Analyzer:
    """The analysis half of the engine.

    Args:
        ward: for alert ids and payloads.
        rules: the rule set in force (``reload`` swaps it without losing state).
        policy: escalation and reminder timers.
        lateness_ms: how far behind a channel's newest reading a reading may still move windows.
        score_news2: keep a NEWS2 per patient (screens show it even when no NEWS2 rule is on).
    """

    def __init__(self, ward: str, rules: RuleSet, policy: AlarmPolicy | None = None,
                 lateness_ms: int = 60_000, score_news2: bool = True) -> None:
        self.ward = ward
        self.score_news2 = score_news2
        self.rules = rules
        self.policy = policy or AlarmPolicy()
        self.lateness_ms = lateness_ms
        self.patients: dict[str, PatientState] = {}
        self._alert_index: dict[str, tuple[str, str]] = {}  # alert id -> (patient, rule)
        self._batch_rest = 0  # large batches left before the batch pass is tried again
        # (patient, vital) -> what the batch pass found for it last: patient, series, (guard, key), checks;
        # valid while the patient and the guard are the very same objects
        self._groups: dict[tuple[str, str], tuple[PatientState, Series, tuple[tuple[
            bool, float, float, tuple[RuleSpec, ...]], tuple[str, str]] | None, list[_TrendCheck]]] = {}

    # -- configuration ----------------------------------------------------------
    def reload(self, rules: RuleSet) -> None:
        """New rules; windows, rule states and open alerts of rules that still exist are kept."""
        self.rules = rules
        self._groups.clear()
        for ps in self.patients.values():
            ps.variants.clear()
            ps.guards.clear()
            ps.trend_checks.clear()
            for name in [n for n in ps.rule_states if n not in rules.by_name]:
                del ps.rule_states[name]

    def set_patient(self, patient: str, station: str | None, overrides: Mapping[str, Any] | None) -> None:
        ps = self._patient(patient)
        ps.station = station
        if overrides is not None:
            ps.overrides = {k: dict(v) for k, v in overrides.items()}
            ps.variants.clear()
            ps.guards.clear()
            ps.trend_checks.clear()

    def discharge(self, patient: str, wall_ms: int, out: AnalysisOutputs) -> None:
        """The patient left: close every open alert (monitoring ended) and free the state."""
        ps = self.patients.get(patient)
        if ps is None:
            return
        for alert in list(ps.open_alerts.values()):
            after = replace(alert, state=AlertState.RESOLVED, condition_active=False,
                            message=f"Patient discharged: {alert.message}")
            self._change(ps, alert, after, out)
        self.evict(patient)

    def evict(self, patient: str) -> None:
        ps = self.patients.pop(patient, None)
        for pair in [pair for pair in self._groups if pair[0] == patient]:
            del self._groups[pair]
        if ps is not None:
            for a in ps.open_alerts.values():
                self._alert_index.pop(a.id, None)

    def restore_alert(self, alert: Alert) -> None:
        """Put an open alert back after a restart, so its condition is not raised twice."""
        ps = self._patient(alert.patient)
        ps.open_alerts[alert.rule] = alert
        self._alert_index[alert.id] = (alert.patient, alert.rule)
        rs = ps.rule_states.setdefault(alert.rule, RuleState())
        rs.active, rs.alert_id, rs.priority = alert.condition_active, alert.id, alert.priority
        ps.guards.clear()

    def _patient(self, patient: str) -> PatientState:
        ps = self.patients.get(patient)
        if ps is None:
            ps = self.patients[patient] = PatientState(patient)
        return ps

    # -- readings ----------------------------------------------------------------
    def on_readings(self, readings: Iterable[Reading], wall_ms: int, out: AnalysisOutputs) -> None:
        batch = readings if isinstance(readings, list) else list(readings)
        ecg = self._ecg_prepass(batch) if len(batch) >= _ECG_BATCH_MIN else {}
        slow: list[int] | range = range(len(batch))
        if len(batch) >= BATCH_MIN:
            if self._batch_rest > 0:
                self._batch_rest -= 1
            else:
                slow = self._batch_pass(batch, wall_ms)
                if len(slow) > len(batch) * _BATCH_USEFUL:  # e.g. NEWS2 scores send most readings one by one:
                    self._batch_rest = _BATCH_REST  # the pass costs more than it saves; try again later
        for i in slow:
            reading = batch[i]
            try:
                self._on_reading(reading, wall_ms, out, ecg.get(i) if ecg else None)
            except Exception as exc:  # one vital's failure must not stop the others: hospital requirement
                out.faults.append(Fault(reading.patient, reading.vital, f"{type(exc).__name__}: {exc}"))
                self._fault_alert(reading, wall_ms, out, exc)

    def _batch_pass(self, batch: list[Reading], wall_ms: int) -> list[int]:
        """Take the quiet readings of a large batch out as arrays; the positions of the rest.

        A reading is quiet when handling it one by one would only append it to its series and move
        the patient's latest values: a float, in time order, inside the safe interval of its
        channel's ``last`` rules (``_guard``), not breaching its baseline trend rules, with no
        technical alert of the vital open and no NEWS2 score or sleep change of the patient before it
        in the batch. Each (patient, vital) group's quiet readings are a prefix of the group, so they
        are appended at once (``Series.append_run``); the readings left (returned, in batch order)
        then go through ``_on_reading`` exactly as they would have. Quiet readings emit nothing, so
        the outputs come in the same order. Whatever could read another series of the patient (a
        NEWS2 score) comes after all of the patient's quiet ones. New patients and vitals get their
        state (and its dict order) as their first reading would have given it.
        """
        n = len(batch)
        gid: dict[tuple[str, str], int] = {}
        codes = np.fromiter([gid.setdefault((r.patient, r.vital), len(gid)) for r in batch], dtype=np.intp, count=n)
        ts = np.fromiter([r.ts_ms for r in batch], dtype=np.int64, count=n)
        values = np.fromiter([v if type(v := r.value) is float else nan for r in batch], dtype=np.float64, count=n)
        order = np.argsort(codes, kind="stable")
        sc = codes[order]
        starts = np.flatnonzero(np.concatenate(([True], sc[1:] != sc[:-1])))  # group g starts at starts[g]
        first_pos = order[starts]  # in batch order, as the codes were given
        n_groups = len(gid)
        lo_l = [inf] * n_groups  # empty interval: the group goes one by one
        hi_l = [-inf] * n_groups
        newest_l = [0] * n_groups
        news2_l = [-1] * n_groups
        kind_l = [0] * n_groups  # 1: NEWS2 input, 2: continuous NEWS2 input, 3: sleep
        pcodes: dict[str, int] = {}
        patient_l = [pcodes.setdefault(patient, len(pcodes)) for patient, _vital in gid]
        groups: list[tuple[PatientState, str, Series, list[_TrendCheck]] | None] = [None] * n_groups
        on_channel = self.rules.on_channel
        no_data = self.rules.no_data
        patients = self.patients
        news2_on = self.score_news2
        known = self._groups
        for g, (pair, first) in enumerate(zip(gid, first_pos.tolist(), strict=True)):
            patient, vital = pair
            if vital == "sleep":
                kind_l[g] = 3
            elif news2_on and vital in _NEWS2_INPUTS:
                kind_l[g] = 2 if vital in _CONTINUOUS else 1
            ps = patients.get(patient)
            hit = known.get(pair)
            if hit is not None and hit[0] is ps and not ps.open_alerts:  # what the last batch found still holds?
                _ps, known_series, held, checks = hit
                if held is None:  # no rules on the channel
                    lo_l[g], hi_l[g] = -inf, inf
                elif (ps.guards.get(held[1]) is held[0] and held[0][0] == bool(ps.asleep)
                      and (not checks or _quiet_rules(ps, held[0][3]))):
                    lo_l[g], hi_l[g] = held[0][1], held[0][2]
                else:
                    hit = None
                if hit is not None:
                    newest_l[g] = known_series.newest_ts or 0  # never None: the series was not empty
                    news2_l[g] = ps.news2_ts
                    groups[g] = (ps, vital, known_series, checks)
                    continue
            if ps is None:  # created here, in the order their first readings would have created them
                ps = self._patient(patient)
            key = (vital, "")
            if vital not in ps.latest:  # what the first reading sets before anything else, in the same order
                reading = batch[first]
                ps.last_received_wall[vital] = max(wall_ms, 0)
                ps.last_ts[vital] = reading.ts_ms
                ps.latest[vital] = (reading.ts_ms, reading.value)
                if type(reading.value) is float and key not in ps.series:
                    ps.series[key] = Series(self.rules.horizon_ms(vital, ""), self.lateness_ms)
            series = ps.series.get(key)
            if series is None:
                continue
            if ps.open_alerts and (f"analysis_fault_{vital}" in ps.open_alerts
                                   or any(r.name in ps.open_alerts for r in no_data.get(vital, ()))):
                continue
            news2_l[g] = ps.news2_ts
            rules = on_channel.get(key)
            checks = []
            held = None
            if rules:
                guard = ps.guards.get(key)
                if guard is None or guard[0] != bool(ps.asleep):
                    guard = self._guard(ps, key, rules)
                if guard is None:
                    continue
                if guard[3]:
                    cached = ps.trend_checks.get(key)
                    if cached is not None and cached[0] is guard:
                        checks = cached[1]
                    else:
                        checks = self._trend_checks(ps, guard[3])
                        ps.trend_checks[key] = (guard, checks)
                    if not checks or not _quiet_rules(ps, guard[3]):
                        continue
                lo_l[g], hi_l[g] = guard[1], guard[2]
                held = (guard, key)
            else:
                lo_l[g], hi_l[g] = -inf, inf
            newest = series.newest_ts
            newest_l[g] = newest if newest is not None else -(2**62)
            groups[g] = (ps, vital, series, checks)
            if newest is not None:
                known[pair] = (ps, series, held, checks)
        sts = ts[order]
        sv = values[order]
        ends = np.append(starts[1:], n)
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = sts[:-1]
        prev[starts] = newest_l
        ok = (sts >= prev) & (np.array(lo_l)[sc] <= sv) & (sv <= np.array(hi_l)[sc])
        where = np.arange(n)
        prefix_end = np.minimum(np.minimum.reduceat(np.where(ok, n, where), starts), ends)
        memos: dict[int, list[tuple[int, dict[tuple[str, int], tuple[int, float]]]]] = {}
        trend_groups = [g for g in np.flatnonzero(prefix_end > starts).tolist()
                        if (grp := groups[g]) is not None and grp[3]]
        if trend_groups:
            sts_l = sts.tolist()
            sv_l = sv.tolist()
            for g in trend_groups:
                grp = groups[g]
                assert grp is not None
                end, updates = self._baseline_scan(grp[2], grp[3], sts_l, sv_l, sv, int(starts[g]),
                                                   int(prefix_end[g]))
                prefix_end[g] = end
                memos[g] = updates
        # the positions from which a patient goes one by one: its first sleep reading, and with NEWS2 on,
        # the first reading that may score (not throttled, or not quiet)
        kind = np.array(kind_l, dtype=np.int8)
        cut = np.full(n_groups, n, dtype=np.intp)
        if (kind > 0).any():
            cut[kind == 3] = first_pos[kind == 3]
            is_n2 = (kind == 1) | (kind == 2)
            if is_n2.any():
                n2 = np.array(news2_l, dtype=np.int64)[sc]
                since = sts - n2
                throttled = (kind[sc] == 2) & (n2 >= 0) & (since >= 0) & (since < _NEWS2_EVERY_MS)
                scoring = is_n2[sc] & ~throttled
                first_scoring = np.minimum.reduceat(np.where(scoring, order, n), starts)
                first_slow = np.where(prefix_end < ends, order[np.minimum(prefix_end, n - 1)], n)
                cut[is_n2] = np.minimum(first_scoring, first_slow)[is_n2]
        if (cut < n).any():
            patient_of = np.array(patient_l, dtype=np.intp)
            patient_cut = np.full(len(pcodes), n, dtype=np.intp)
            np.minimum.at(patient_cut, patient_of, cut)
            after = order >= patient_cut[patient_of[sc]]
            prefix_end = np.minimum(prefix_end, np.minimum.reduceat(np.where(after, where, n), starts))
        fast_groups = np.flatnonzero(prefix_end > starts)
        last = prefix_end[fast_groups] - 1
        for g, a, b, t_last, v_last in zip(fast_groups.tolist(), starts[fast_groups].tolist(),
                                           prefix_end[fast_groups].tolist(), sts[last].tolist(),
                                           sv[last].tolist(), strict=True):
            grp = groups[g]
            assert grp is not None
            ps, vital, series, _checks = grp
            series.append_run(sts, sv, a, b, t_last, v_last)
            if g in memos:
                for j, changes in memos[g]:
                    if j < b:
                        series.memo.update(changes)
            last_ts = ps.last_ts
            if t_last > last_ts[vital]:
                last_ts[vital] = t_last
            if t_last >= ps.latest[vital][0]:
                ps.latest[vital] = (t_last, v_last)
            received = ps.last_received_wall
            if wall_ms > received[vital]:
                received[vital] = wall_ms
        fast = np.zeros(n, dtype=bool)
        fast[order[where < prefix_end[sc]]] = True
        slow: list[int] = np.flatnonzero(~fast).tolist()
        return slow

    def _trend_checks(self, ps: PatientState, rules: tuple[RuleSpec, ...]) -> list[_TrendCheck]:
        """What ``_baseline_scan`` needs of each rule in force; empty if one is not a baseline trend."""
        asleep = bool(ps.asleep)
        checks: list[_TrendCheck] = []
        for rule in rules:
            f = rule.when.feature
            if f.op not in _BASELINE_OPS:
                return []
            awake, asleep_v, _ = self.variants(ps, rule)
            variant = asleep_v if asleep else awake
            checks.append((("median", f.window_ms), f.window_ms, f.window_ms // 60, f.op == "delta_from_median",
                           variant.enabled, COMPARE[rule.when.compare], variant.threshold))
        return checks

    @staticmethod
    def _baseline_scan(series: Series, checks: list[_TrendCheck], sts_l: list[int], sv_l: list[float],
                       sv: FloatArray, a: int, b: int) -> tuple[
            int, list[tuple[int, dict[tuple[str, int], tuple[int, float]]]]]:
        """The baseline trend rules evaluated at each of the readings ``a:b`` (sorted batch) as
        ``_evaluate`` would, one reading after the other: where the first would breach (the quiet
        prefix ends there), and the memo updates (``features._baseline_median``) of each reading
        before it."""
        memo = series.memo  # read only: the caller applies the updates of the quiet prefix
        updates: list[tuple[int, dict[tuple[str, int], tuple[int, float]]]] = []
        first = sts_l[a]
        for j in range(a, b):
            at = sts_l[j]
            last = sv_l[j]
            changed: dict[tuple[str, int], tuple[int, float]] | None = None
            for key, w_ms, every, delta, enabled, compare, threshold in checks:
                cached = memo.get(key) if changed is None or key not in changed else changed[key]
                if cached is not None and 0 <= at - cached[0] < every:
                    base = cached[1]
                else:
                    old = series.since(at - w_ms)
                    new = sv[a : j + 1]
                    if first <= at - w_ms:
                        new = new[np.asarray(sts_l[a : j + 1]) > at - w_ms]
                    base = median(np.concatenate((old, new)) if len(old) else new)
                    if changed is None:
                        changed = {}
                    changed[key] = (at, base)
                if delta:
                    value = last - base
                elif base:
                    value = (last - base) / base * 100
                else:
                    continue
                if enabled and compare(value, threshold) and isfinite(value):
                    return j, updates
            if changed is not None:
                if memo is series.memo:
                    memo = dict(memo)
                memo.update(changed)
                updates.append((j, changed))
        return b, updates

    def _ecg_prepass(self, batch: list[Reading]) -> dict[int, tuple[EcgAnalyzer, EcgFeatures]]:
        """The ECG chunks of a batch analysed together (``ecg.feed_many``), before the readings are
        taken one by one: a chunk's features depend on its own patient's earlier chunks only."""
        positions: list[int] = []
        jobs: list[tuple[EcgAnalyzer, int, float, npt.NDArray[np.float32]]] = []
        analyzers: dict[str, EcgAnalyzer] = {}
        for i, reading in enumerate(batch):
            value = reading.value
            if reading.vital != "ecg" or not isinstance(value, Waveform):
                continue
            try:
                samples = np.frombuffer(value.samples, dtype="<f4")
            except ValueError:
                continue  # left to _on_reading, which reports it as a fault
            analyzer = analyzers.get(reading.patient)
            if analyzer is None:
                ps = self.patients.get(reading.patient)
                analyzer = ps.ecg if ps is not None and ps.ecg is not None else EcgAnalyzer()
                analyzers[reading.patient] = analyzer
            positions.append(i)
            jobs.append((analyzer, reading.ts_ms, value.hz, samples))
        if len(jobs) < 2:
            return {}
        return {i: (job[0], features) for i, job, features in zip(positions, jobs, feed_many(jobs), strict=True)}

    def _on_reading(self, reading: Reading, wall_ms: int, out: AnalysisOutputs,
                    ecg: tuple[EcgAnalyzer, EcgFeatures] | None = None) -> None:
        ps = self.patients.get(reading.patient)
        if ps is None:
            ps = self._patient(reading.patient)
        vital = reading.vital
        ts = reading.ts_ms
        value = reading.value
        received = ps.last_received_wall
        received[vital] = max(wall_ms, received.get(vital, 0))
        last_ts = ps.last_ts.get(vital)
        if last_ts is None or ts > last_ts:
            ps.last_ts[vital] = ts
        latest = ps.latest.get(vital)
        if latest is None or ts >= latest[0]:
            ps.latest[vital] = (ts, value)
        if ps.open_alerts:
            self._resolve_technical(ps, vital, reading, out)
        if type(value) is float:
            self._feed(ps, vital, "", ts, value, reading, wall_ms, out)
        elif vital == "sleep" and isinstance(value, str):
            if ts >= ps.sleep_ts:
                ps.sleep_ts, ps.asleep = ts, value == "asleep"
            return
        elif ecg is not None:  # analysed with the batch's other chunks
            if ps.ecg is None:
                ps.ecg = ecg[0]
            for channel, number in ecg[1].channels().items():
                self._feed(ps, vital, channel, ts, number, reading, wall_ms, out)
        else:
            for channel, number in self._channels(ps, reading).items():
                self._feed(ps, vital, channel, ts, number, reading, wall_ms, out)
        if self.score_news2 and vital in _NEWS2_INPUTS:
            self._score(ps, reading, wall_ms, out)

    def _channels(self, ps: PatientState, reading: Reading) -> dict[str, float]:
        value = reading.value
        if isinstance(value, float):
            return {"": value}
        if isinstance(value, dict):
            return value
        if isinstance(value, Waveform) and reading.vital == "ecg":
            if ps.ecg is None:
                ps.ecg = EcgAnalyzer()
            samples = np.frombuffer(value.samples, dtype="<f4")  # a view: the analyzer makes the one copy
            return ps.ecg.feed(reading.ts_ms, value.hz, samples).channels()
        return {}

    def _feed(self, ps: PatientState, vital: str, channel: str, ts: int, number: float, reading: Reading | None,
              wall_ms: int, out: AnalysisOutputs) -> None:
        key = (vital, channel)
        series = ps.series.get(key)
        if series is None:
            series = ps.series[key] = Series(self.rules.horizon_ms(vital, channel), self.lateness_ms)
        if not series.add(ts, number):
            out.late += 1  # stored, counted, but it moves no window
            return
        rules = self.rules.on_channel.get(key)
        if rules:
            guard = ps.guards.get(key)
            if guard is None or guard[0] != bool(ps.asleep):
                guard = self._guard(ps, key, rules)
            if guard is not None and guard[1] <= number <= guard[2]:
                rules = guard[3]  # the quiet ``last`` rules cannot breach at this value
            else:
                ps.guards.pop(key, None)  # something may change: evaluate all, and build the guard again
            for rule in rules:
                self._evaluate(ps, rule, series, ts, reading, wall_ms, out, number)

    def _guard(self, ps: PatientState, key: tuple[str, str], rules: tuple[RuleSpec, ...]) -> tuple[
            bool, float, float, tuple[RuleSpec, ...]] | None:
        """The values at which no ``last`` rule of the channel can breach, if all of them are quiet."""
        asleep = bool(ps.asleep)
        lo, hi = -inf, inf
        others: list[RuleSpec] = []
        for rule in rules:
            if rule.when.feature.op != "last":
                others.append(rule)
                continue
            rs = ps.rule_states.get(rule.name)
            if rs is not None and (rs.active or rs.since_ts is not None):
                return None
            cached = ps.variants.get(rule.name)
            awake, asleep_variant, _ = cached if cached is not None else self.variants(ps, rule)
            variant = asleep_variant if asleep else awake
            if not variant.enabled:
                continue
            thr, compare = variant.threshold, rule.when.compare
            if compare == "<":  # safe: v >= thr
                lo = max(lo, thr)
            elif compare == "<=":  # safe: v > thr
                lo = max(lo, nextafter(thr, inf))
            elif compare == ">":
                hi = min(hi, thr)
            else:
                hi = min(hi, nextafter(thr, -inf))
        guard = (asleep, lo, hi, tuple(others))
        ps.guards[key] = guard
        return guard

    # -- rules -------------------------------------------------------------------
    def variants(self, ps: PatientState, rule: RuleSpec) -> tuple[Variant, Variant, bool]:
        """(awake, asleep, overridden) for this patient: the rule's numbers plus overrides."""
        cached = ps.variants.get(rule.name)
        if cached is None:
            raw = ps.overrides.get(rule.name)
            if raw:
                top = {k: v for k, v in raw.items() if k != "asleep"}
                awake = apply_override(rule.awake, top, f"thresholds.{rule.name}")
                asleep = apply_override(apply_override(rule.asleep, top, rule.name), raw.get("asleep", {}), rule.name)
                cached = (awake, asleep, True)
            else:
                cached = (rule.awake, rule.asleep, False)
            ps.variants[rule.name] = cached
        return cached

    def _evaluate(self, ps: PatientState, rule: RuleSpec, series: Series, ts: int, reading: Reading | None,
                  wall_ms: int, out: AnalysisOutputs, number: float | None = None) -> None:
        """Evaluate ``rule`` at ``ts``; ``number`` is the reading just added at ``ts``, if any (then it
        is the ``last`` operator's value without asking the series)."""
        cached = ps.variants.get(rule.name)
        awake, asleep, overridden = cached if cached is not None else self.variants(ps, rule)
        variant = asleep if ps.asleep else awake
        when = rule.when
        if number is not None and when.feature.op == "last":
            if not isfinite(number):
                return
            value = number
        else:
            computed = compute(series, ts, when.feature)
            if computed is None:
                return
            value = computed
        breached = variant.enabled and COMPARE[when.compare](value, variant.threshold)
        rs = ps.rule_states.get(rule.name)
        if not breached and (rs is None or (not rs.active and rs.since_ts is None)):
            return  # the common case: quiet, and nothing to reset
        if rs is None:
            rs = ps.rule_states[rule.name] = RuleState()
        extra_ok = True
        for cond in rule.also:
            other = compute(series, ts, cond.feature)
            extra_ok = extra_ok and other is not None and cond.holds(other)
        holds = breached and extra_ok
        in_force = Condition(when.feature, when.compare, variant.threshold)
        cleared = not variant.enabled or in_force.cleared(value, rule.hysteresis) or not extra_ok
        period_s = self.rules.period_s(rule)
        clear_delay = rule.clear_delay_s if rule.clear_delay_s is not None else variant.delay_s
        decided = step(rs, holds, cleared, ts, period_s, variant, clear_delay)
        open_alert = ps.open_alerts.get(rule.name)
        words = "override" if overridden else ("asleep" if ps.asleep else "awake")
        if decided.raise_now or (holds and open_alert is not None):
            priority = rule.priority
            for tier in variant.tiers:
                if COMPARE[rule.when.compare](value, tier.threshold) and tier.priority.rank > priority.rank:
                    priority = tier.priority
            fields = self._message_fields(ps, rule, value, variant, decided.held_s)
            explanation = self._explain(rule, series, ts, value, variant, words, decided.held_s)
            shown = self._shown_value(rule, reading, value)
            if open_alert is None:
                alert = Alert(
                    id=alert_id(self.ward, ps.patient, rule.name, ts), ward=self.ward, patient=ps.patient,
                    station=ps.station, rule=rule.name, vital=rule.vital if rule.vital != "news2" else None,
                    kind=rule.kind, priority=priority, state=AlertState.RAISED, value=shown, ts=ts,
                    message=rule.message.format(**fields), patient_state=ps.state_word, raised_ts=ts,
                    latching=rule.latching, raised_wall_ms=wall_ms, last_notified_wall_ms=wall_ms,
                    explanation=explanation,
                )
                self._open(ps, alert, out)
            else:
                if not open_alert.condition_active and decided.raise_now:
                    open_alert = replace(open_alert, condition_active=True, ts=ts, value=shown)
                    ps.open_alerts[rule.name] = open_alert
                upgraded = worsened(open_alert, priority, ts, shown, rule.message.format(**fields), explanation,
                                    wall_ms)
                if upgraded is not None:
                    self._open(ps, upgraded, out)
        elif decided.clear_now and open_alert is not None:
            fields = self._message_fields(ps, rule, value, variant, 0.0)
            after = condition_cleared(open_alert, ts, self._shown_value(rule, reading, value),
                                      f"Cleared: {rule.message.format(**fields)}")
            self._change(ps, open_alert, after, out)

    @staticmethod
    def _shown_value(rule: RuleSpec, reading: Reading | None, value: float) -> Any:
        if reading is not None and rule.when.feature.op == "last" and isinstance(reading.value, dict):
            return reading.value  # e.g. the whole blood pressure, as it came in
        return round(value, 3)

    @staticmethod
    def _message_fields(ps: PatientState, rule: RuleSpec, value: float, variant: Variant,
                        held_s: float) -> dict[str, Any]:
        return {"value": value, "threshold": variant.threshold, "held_s": held_s, "patient_state": ps.state_word,
                "patient": ps.patient, "baseline": 0.0, "unit": "", "score": value, "silence_s": rule.silence_s}

    @staticmethod
    def _explain(rule: RuleSpec, series: Series, ts: int, value: float, variant: Variant, words: str,
                 held_s: float) -> dict[str, Any]:
        f = rule.when.feature
        span = f.window_ms or round(max(variant.delay_s, 1) * 1000)
        w_ts, w_values = series.window(ts, span)
        window: dict[str, Any] = {"from_ts": int(w_ts[0]), "to_ts": int(w_ts[-1]), "n": len(w_values),
                                  "min": float(w_values.min()), "max": float(w_values.max())} if len(w_values) else {}
        return {
            "rule": rule.name, "threshold": variant.threshold, "compare": rule.when.compare, "in_force": words,
            "feature": {"op": f.op, "window_s": f.window_s, "count": f.count}, "feature_value": round(value, 3),
            "delay_s": variant.delay_s, "delay_readings": variant.delay_readings, "held_s": round(held_s, 1),
            "hysteresis": rule.hysteresis, "window": window, "basis": rule.basis,
        }

    def _open(self, ps: PatientState, alert: Alert, out: AnalysisOutputs) -> None:
        ps.open_alerts[alert.rule] = alert
        self._alert_index[alert.id] = (ps.patient, alert.rule)
        out.alerts.append(alert)

    def _change(self, ps: PatientState, before: Alert, after: Alert, out: AnalysisOutputs) -> None:
        if after.state is AlertState.RESOLVED:
            ps.open_alerts.pop(before.rule, None)
            self._alert_index.pop(before.id, None)
            rs = ps.rule_states.get(before.rule)
            if rs is not None:
                rs.active = False
        else:
            ps.open_alerts[before.rule] = after
        if after != before:
            out.alerts.append(after)

    # -- NEWS2 -------------------------------------------------------------------
    def _score(self, ps: PatientState, reading: Reading, wall_ms: int, out: AnalysisOutputs) -> None:
        ts = reading.ts_ms
        continuous = reading.vital in ("heart_rate", "respiration", "spo2")
        if continuous and ps.news2_ts >= 0 and 0 <= ts - ps.news2_ts < _NEWS2_EVERY_MS:
            return
        opts = ps.overrides.get("news2", {})
        series = ps.series

        def window(key: tuple[str, str], span_ms: int) -> FloatArray | None:
            s = series.get(key)
            if s is None:
                return None
            w_v = s.window(ts, span_ms)[1]
            return w_v if len(w_v) else None

        rr_v = window(("respiration", ""), _SMOOTH_MS)
        spo2_v = window(("spo2", ""), _SMOOTH_MS)
        hr_v = window(("heart_rate", ""), _SMOOTH_MS)
        bp_v = window(("blood_pressure", "systolic"), _BP_MAX_AGE_MS)
        temp_v = window(("temperature", ""), _TEMP_MAX_AGE_MS)
        if (rr_v is None) + (spo2_v is None) + (hr_v is None) + (bp_v is None) + (temp_v is None) > 2:
            return  # too little to score (below, without the medians); missing parameters are not scored 0

        def smoothed(v: FloatArray | None) -> float | None:  # compute(series, ts, _NEWS2_SMOOTH)
            if v is None:
                return None
            m = median(v)
            return m if isfinite(m) else None

        score = news2(
            rr=smoothed(rr_v), spo2=smoothed(spo2_v), pulse=smoothed(hr_v),
            sbp=float(bp_v[-1]) if bp_v is not None else None,
            temperature=float(temp_v[-1]) if temp_v is not None else None,
            on_oxygen=opts.get("on_oxygen"), spo2_scale=int(opts.get("spo2_scale", 1)),
            consciousness=opts.get("consciousness"),  # never derived from sleep
        )
        if len(score.missing) > 2:
            return  # too little to score; missing parameters are not scored 0
        ps.news2_ts = max(ps.news2_ts, ts)
        ps.news2 = score
        if score.total != ps.news2_total:
            out.scores.append(ScoreUpdate(ps.patient, ts, score))
            ps.news2_total = score.total
        for channel, number in (("total", float(score.total)), ("max_part", float(score.max_part))):
            self._feed(ps, "news2", channel, ts, number, None, wall_ms, out)

    # -- wall clock ---------------------------------------------------------------
    def tick(self, wall_ms: int, out: AnalysisOutputs) -> None:
        """No-data alerts, escalation and reminders, idle eviction; the only use of wall time."""
        gone = [ps for ps in self.patients.values() if ps.last_received_wall
                and wall_ms - max(ps.last_received_wall.values()) >= EVICT_AFTER_MS
                and all(a.kind is AlertKind.TECHNICAL for a in ps.open_alerts.values())]
        for ps in gone:  # silent for hours, nothing clinical open: the patient has left monitoring
            for alert in list(ps.open_alerts.values()):
                after = replace(alert, state=AlertState.RESOLVED, condition_active=False,
                                message=f"No data for hours; monitoring of {ps.patient} ended: {alert.message}")
                self._change(ps, alert, after, out)
            self.evict(ps.patient)
        for ps in self.patients.values():
            for vital, last_wall in ps.last_received_wall.items():
                for rule in self.rules.no_data.get(vital, ()):
                    if rule.name in ps.open_alerts or not self.variants(ps, rule)[0].enabled:
                        continue
                    if wall_ms - last_wall >= rule.silence_s * 1000:
                        ts = ps.last_ts.get(vital, 0)
                        alert = Alert(
                            id=alert_id(self.ward, ps.patient, rule.name, wall_ms), ward=self.ward,
                            patient=ps.patient, station=ps.station, rule=rule.name, vital=vital,
                            kind=AlertKind.TECHNICAL, priority=rule.priority, state=AlertState.RAISED,
                            value=None, ts=ts, message=rule.message.format(**self._message_fields(
                                ps, rule, 0.0, rule.awake, 0.0)),
                            patient_state=ps.state_word, raised_ts=ts, latching=rule.latching,
                            raised_wall_ms=wall_ms, last_notified_wall_ms=wall_ms,
                            explanation={"rule": rule.name, "silence_s": rule.silence_s,
                                         "last_reading_ts": ts, "last_received_ms": last_wall},
                        )
                        self._open(ps, alert, out)
            for alert in list(ps.open_alerts.values()):
                due = self.policy.due(alert, wall_ms)
                if due is not None:
                    self._change(ps, alert, due, out)

    def _resolve_technical(self, ps: PatientState, vital: str, reading: Reading, out: AnalysisOutputs) -> None:
        for rule in self.rules.no_data.get(vital, ()):
            alert = ps.open_alerts.get(rule.name)
            if alert is not None:
                after = condition_cleared(alert, reading.ts_ms, None, f"Data back: {alert.message}")
                self._change(ps, alert, after, out)
        fault = ps.open_alerts.get(f"analysis_fault_{vital}")
        if fault is not None:
            self._change(ps, fault, condition_cleared(fault, reading.ts_ms, None, fault.message), out)

    def _fault_alert(self, reading: Reading, wall_ms: int, out: AnalysisOutputs, exc: Exception) -> None:
        ps = self._patient(reading.patient)
        name = f"analysis_fault_{reading.vital}"
        if name in ps.open_alerts:
            return
        alert = Alert(
            id=alert_id(self.ward, ps.patient, name, reading.ts_ms), ward=self.ward, patient=ps.patient,
            station=ps.station, rule=name, vital=reading.vital, kind=AlertKind.TECHNICAL, priority=Priority.MEDIUM,
            state=AlertState.RAISED, value=None, ts=reading.ts_ms,
            message=f"Analysis of {reading.vital} failed; other vitals are still monitored",
            patient_state=ps.state_word, raised_ts=reading.ts_ms, latching=False, raised_wall_ms=wall_ms,
            last_notified_wall_ms=wall_ms, explanation={"error": type(exc).__name__},
        )
        self._open(ps, alert, out)

    # -- operators ---------------------------------------------------------------
    def acknowledge(self, alert_id_: str, by: str, out: AnalysisOutputs) -> Alert | None:
        """Acknowledge an open alert by id; None if unknown or nothing changed."""
        where = self._alert_index.get(alert_id_)
        if where is None:
            return None
        ps = self.patients[where[0]]
        alert = ps.open_alerts.get(where[1])
        if alert is None:
            return None
        after = acknowledge(alert, by, alert.ts)
        if after is None:
            return None
        self._change(ps, alert, after, out)
        return after

    def open_alerts(self, patient: str | None = None) -> list[Alert]:
        patients = [self.patients[patient]] if patient in self.patients else (
            [] if patient is not None else list(self.patients.values()))
        return [a for ps in patients for a in ps.open_alerts.values()]


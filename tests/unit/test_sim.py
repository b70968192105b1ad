"""Tests for the ward simulator: model, malformed messages, publisher and CLI."""

from __future__ import annotations

import argparse
import itertools
import math
import os
import socket
import statistics
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from monitorme.sim import cli
from monitorme.sim.malformed import MALFORMED_REASONS, malformed_message, malformed_messages
from monitorme.sim.model import (
    ECG_HZ,
    PERIODS_MS,
    SCENARIOS,
    VITALS,
    SimMessage,
    expected_counts,
    generate_ward,
    is_asleep,
)
from monitorme.sim.publisher import BrokerURL, parse_url, publish

# 2023-11-14 (UTC) at fixed hours, so sleep state is known.
NOON_MS = 1_699_963_200_000
THREE_AM_MS = NOON_MS - 9 * 3_600_000
TWO_PM_MS = NOON_MS + 2 * 3_600_000
START_MS = 1_700_000_000_000  # 22:13:20 UTC: some patients fall asleep during the run
TEN_MIN_S = 600.0

Series = dict[tuple[str, str], list[tuple[int, Any]]]


def _decode(messages: list[SimMessage]) -> Series:
    """(patient, vital) -> [(ts, value)] from the payloads, checking topic/payload agreement."""
    out: Series = defaultdict(list)
    for m in messages:
        if m.malformed_reason is not None:
            continue
        body = orjson.loads(m.payload)
        assert body["ts"] == m.ts_ms
        out[(m.patient, m.vital)].append((body["ts"], body["value"]))
    return out


def _between(series: list[tuple[int, Any]], lo_ms: float, hi_ms: float) -> list[Any]:
    return [v for ts, v in series if lo_ms <= ts < hi_ms]


def _r_peaks(signal: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Indices of local maxima above 0.6 mV, at least 200 ms apart."""
    mid = signal[1:-1]
    idx = np.flatnonzero((mid > 0.6) & (mid >= signal[:-2]) & (mid > signal[2:])) + 1
    keep: list[int] = []
    for i in idx:
        if not keep or i - keep[-1] > ECG_HZ // 5:
            keep.append(int(i))
    return np.array(keep, dtype=np.intp)


def _ecg_signal(chunks: list[tuple[int, Any]]) -> npt.NDArray[np.float64]:
    return np.concatenate([np.asarray(v["samples"], dtype=np.float64) for _, v in chunks])


@pytest.fixture(scope="module")
def ward_run() -> list[SimMessage]:
    """Ten minutes of a 20-patient ward (about 50k messages)."""
    return list(generate_ward("w1", 20, START_MS, TEN_MIN_S, seed=7))


@pytest.fixture(scope="module")
def ward_series(ward_run: list[SimMessage]) -> Series:
    return _decode(ward_run)


# -- model: shape of the stream ------------------------------------------------------------


def test_same_seed_same_messages_other_seed_other_messages() -> None:
    a = list(generate_ward("w1", 3, START_MS, 60, seed=42))
    b = list(generate_ward("w1", 3, START_MS, 60, seed=42))
    c = list(generate_ward("w1", 3, START_MS, 60, seed=43))
    assert a == b
    assert [m.payload for m in a] != [m.payload for m in c]


def test_patient_stream_does_not_depend_on_ward_size() -> None:
    small = [m for m in generate_ward("w1", 1, START_MS, 60, seed=5)]
    large = [m for m in generate_ward("w1", 5, START_MS, 60, seed=5) if m.patient == "p001"]
    assert small == large


def test_messages_sorted_by_event_time(ward_run: list[SimMessage]) -> None:
    ts = [m.ts_ms for m in ward_run]
    assert ts == sorted(ts)
    assert ts[0] >= START_MS
    assert ts[-1] < START_MS + TEN_MIN_S * 1000


def test_every_vital_of_every_patient_in_ten_minutes(ward_run: list[SimMessage]) -> None:
    counts = expected_counts(ward_run)
    patients = [f"p{i:03d}" for i in range(1, 21)]
    assert set(counts) == {(p, v) for p in patients for v in VITALS}
    for (_, vital), n in counts.items():
        # First reading within 2 s, then one per period.
        assert n == math.ceil((TEN_MIN_S * 1000 - 2000) / PERIODS_MS[vital]) or (
            n == math.ceil(TEN_MIN_S * 1000 / PERIODS_MS[vital])
        ), (vital, n)


def test_first_reading_early_then_strictly_periodic(ward_run: list[SimMessage]) -> None:
    by_key: dict[tuple[str, str], list[SimMessage]] = defaultdict(list)
    for m in ward_run:
        by_key[(m.patient, m.vital)].append(m)
    for (patient, vital), msgs in by_key.items():
        period = PERIODS_MS[vital]
        assert msgs[0].ts_ms - START_MS < min(period, 2000)
        assert {b.ts_ms - a.ts_ms for a, b in itertools.pairwise(msgs)} <= {period}
        bodies = [orjson.loads(m.payload) for m in msgs]
        assert [b["seq"] for b in bodies] == list(range(1, len(msgs) + 1))
        assert {b["device"] for b in bodies} == {f"{patient}-{vital}"}
        assert {m.topic for m in msgs} == {f"monitorme/w1/{patient}/{vital}"}


def test_values_have_contract_shapes_and_ranges(ward_series: Series) -> None:
    for (_, vital), series in ward_series.items():
        values = [v for _, v in series]
        if vital == "heart_rate":
            assert all(isinstance(v, int | float) and 30 <= v <= 130 for v in values)
        elif vital == "spo2":
            assert all(88 <= v <= 100 and round(v, 1) == v for v in values)
        elif vital == "respiration":
            assert all(6 <= v <= 30 and round(v, 1) == v for v in values)
        elif vital == "temperature":
            assert all(35.0 <= v <= 38.0 and round(v, 2) == v for v in values)
        elif vital == "glucose":
            assert all(40 <= v <= 250 and round(v, 1) == v for v in values)
        elif vital == "blood_pressure":
            for bp in values:
                s, d = bp["systolic"], bp["diastolic"]
                assert all(isinstance(x, int) for x in bp.values())
                assert 70 <= s <= 180
                assert 40 <= d < s
                assert bp["mean"] == round((s + 2 * d) / 3)
        elif vital == "sleep":
            assert set(values) <= {"asleep", "awake"}
        else:
            assert vital == "ecg"
            for chunk in values:
                assert chunk["hz"] == ECG_HZ
                assert len(chunk["samples"]) == ECG_HZ
                assert all(round(x, 3) == x for x in chunk["samples"])


def test_baselines_differ_between_patients(ward_series: Series) -> None:
    means = [statistics.fmean(v for _, v in ward_series[(f"p{i:03d}", "heart_rate")]) for i in range(1, 6)]
    assert max(means) - min(means) > 5


def test_ecg_r_peaks_follow_heart_rate(ward_series: Series) -> None:
    for patient in (f"p{i:03d}" for i in range(1, 21)):
        chunks = ward_series[(patient, "ecg")]
        signal = _ecg_signal(chunks)
        peaks = _r_peaks(signal)
        ecg_rate = 60.0 * (len(peaks) - 1) / ((peaks[-1] - peaks[0]) / ECG_HZ)
        hrs = [v for _, v in ward_series[(patient, "heart_rate")]]
        hr = statistics.fmean(hrs)
        assert abs(ecg_rate - hr) / hr < 0.10, (patient, ecg_rate, hr)
        # No R peak is lost at a chunk boundary: no gap is longer than 1.5 beats.
        assert np.diff(peaks).max() / ECG_HZ < 1.5 * 60.0 / min(hrs)


def test_ecg_beats_slow_down_with_bradycardia() -> None:
    duration = 600.0
    msgs = generate_ward("w1", 1, NOON_MS, duration, scenario="bradycardia", seed=3)
    series = _decode(list(msgs))
    lo, hi = NOON_MS + 0.35 * duration * 1000, NOON_MS + 0.58 * duration * 1000
    chunks = [(ts, v) for ts, v in series[("p001", "ecg")] if lo <= ts < hi]
    peaks = _r_peaks(_ecg_signal(chunks))
    ecg_rate = 60.0 * (len(peaks) - 1) / ((peaks[-1] - peaks[0]) / ECG_HZ)
    hr = statistics.fmean(_between(series[("p001", "heart_rate")], lo, hi))
    assert ecg_rate < 45
    assert abs(ecg_rate - hr) / hr < 0.10


# -- model: sleep ----------------------------------------------------------------------------


def test_sleep_window_is_23_to_7_utc_shifted_per_patient() -> None:
    hour = 3_600_000
    assert is_asleep(THREE_AM_MS)
    assert not is_asleep(TWO_PM_MS)
    assert is_asleep(NOON_MS - 12 * hour + 30 * 60_000)  # 00:30
    assert not is_asleep(NOON_MS - 5 * hour + 30 * 60_000)  # 07:30
    assert not is_asleep(NOON_MS - 5 * hour + 30 * 60_000 - hour, offset_ms=-hour)  # 06:30, -1 h
    assert is_asleep(NOON_MS - 5 * hour + 30 * 60_000, offset_ms=hour)  # 07:30, +1 h


def test_sleep_lowers_hr_bp_spo2_temperature_not_respiration() -> None:
    # Same seed, same patients, same random walks: only the hour differs.
    night = _decode(list(generate_ward("w1", 5, THREE_AM_MS, 900, seed=11)))
    day = _decode(list(generate_ward("w1", 5, TWO_PM_MS, 900, seed=11)))

    def mean(s: Series, p: str, v: str) -> float:
        return statistics.fmean(x for _, x in s[(p, v)])

    for p in (f"p{i:03d}" for i in range(1, 6)):
        assert {v for _, v in night[(p, "sleep")]} == {"asleep"}
        assert {v for _, v in day[(p, "sleep")]} == {"awake"}
        hr_night, hr_day = mean(night, p, "heart_rate"), mean(day, p, "heart_rate")
        assert hr_night < hr_day
        assert hr_night == pytest.approx(0.9 * hr_day, rel=0.03)
        assert mean(night, p, "spo2") == pytest.approx(mean(day, p, "spo2") - 1.0, abs=0.3)
        assert mean(night, p, "temperature") == pytest.approx(mean(day, p, "temperature") - 0.3, abs=0.1)
        assert mean(night, p, "respiration") == pytest.approx(mean(day, p, "respiration"), abs=0.3)
        bp_n, bp_d = night[(p, "blood_pressure")][0][1], day[(p, "blood_pressure")][0][1]
        assert bp_n["systolic"] < bp_d["systolic"]
        assert bp_n["diastolic"] < bp_d["diastolic"]


# -- model: scenarios ----------------------------------------------------------------------


def _scenario(name: str, duration_s: float, patients: int = 2) -> Series:
    """p001 (affected) and p002 (not) from noon UTC, so nobody sleeps during the run."""
    return _decode(list(generate_ward("w1", patients, NOON_MS, duration_s, scenario=name, seed=2)))


def _at(fraction: float, duration_s: float) -> float:
    return NOON_MS + fraction * duration_s * 1000


def test_unknown_scenario_names_the_choices() -> None:
    with pytest.raises(ValueError, match="desaturation") as info:
        generate_ward("w1", 1, START_MS, 10, scenario="zombie")
    assert all(name in str(info.value) for name in SCENARIOS)


def test_desaturation_scenario() -> None:
    d = 1200.0
    s = _scenario("desaturation", d)
    spo2 = s[("p001", "spo2")]
    assert min(v for _, v in spo2) < 88
    assert min(_between(spo2, _at(0, d), _at(0.18, d))) > 90
    assert statistics.fmean(_between(spo2, _at(0.26, d), _at(0.5, d))) < 87
    assert min(_between(spo2, _at(0.6, d), _at(1, d))) > 90
    rr = s[("p001", "respiration")]
    assert statistics.fmean(_between(rr, _at(0.26, d), _at(0.5, d))) > statistics.fmean(
        _between(rr, _at(0, d), _at(0.18, d))
    )
    assert min(v for _, v in s[("p002", "spo2")]) > 90


def test_fever_scenario() -> None:
    d = 3600.0
    s = _scenario("fever", d, patients=1)
    temps = [v for _, v in s[("p001", "temperature")]]
    assert temps[0] < 37.6
    assert temps[-1] > 39.0
    # A scenario only adds effects: the same seed without it has the very same random walks.
    hr = _between(s[("p001", "heart_rate")], _at(0.9, d), _at(1, d))
    hr_normal = _between(_scenario("normal", d, 1)[("p001", "heart_rate")], _at(0.9, d), _at(1, d))
    assert statistics.fmean(hr) - statistics.fmean(hr_normal) == pytest.approx(14.25, abs=1.0)


def test_bradycardia_scenario() -> None:
    d = 1200.0
    s = _scenario("bradycardia", d)
    hr = s[("p001", "heart_rate")]
    assert statistics.median(_between(hr, _at(0.35, d), _at(0.58, d))) < 42
    assert statistics.median(_between(hr, _at(0, d), _at(0.28, d))) > 50
    assert statistics.median(_between(hr, _at(0.7, d), _at(1, d))) > 50
    assert min(v for _, v in s[("p002", "heart_rate")]) > 45


def test_dropout_scenario() -> None:
    d = 1200.0
    s = _scenario("dropout", d)
    for vital in ("spo2", "heart_rate"):
        series = s[("p001", vital)]
        assert _between(series, _at(0.3, d), _at(0.6, d)) == []
        assert _between(series, _at(0.0, d), _at(0.3, d))
        assert _between(series, _at(0.6, d), _at(1.0, d))
        assert _between(s[("p002", vital)], _at(0.3, d), _at(0.6, d))
    assert _between(s[("p001", "ecg")], _at(0.3, d), _at(0.6, d))


def _news2(spo2: float, rr: float, hr: float, sbp: float, temp: float) -> int:
    """NEWS2 (scale 1, on air, alert) from CLINICAL.md §1."""
    score = 3 if rr <= 8 else 1 if rr <= 11 else 0 if rr <= 20 else 2 if rr <= 24 else 3
    score += 3 if spo2 <= 91 else 2 if spo2 <= 93 else 1 if spo2 <= 95 else 0
    score += 3 if sbp <= 90 else 2 if sbp <= 100 else 1 if sbp <= 110 else 0 if sbp < 220 else 3
    score += 3 if hr <= 40 else 1 if hr <= 50 else 0 if hr <= 90 else 1 if hr <= 110 else 2
    score += 1 if hr > 130 else 0
    score += 3 if temp <= 35 else 1 if temp <= 36 else 0 if temp <= 38 else 1 if temp <= 39 else 2
    return score


def test_deterioration_scenario_raises_news2() -> None:
    d = 4 * 3600.0
    s = _scenario("deterioration", d, patients=1)

    def latest(vital: str, before_ms: float) -> Any:
        return [v for ts, v in s[("p001", vital)] if ts < before_ms][-1]

    def score(at_ms: float) -> int:
        return _news2(
            latest("spo2", at_ms),
            latest("respiration", at_ms),
            latest("heart_rate", at_ms),
            latest("blood_pressure", at_ms)["systolic"],
            latest("temperature", at_ms),
        )

    assert score(_at(0.01, d)) <= 3
    assert score(_at(1.0, d)) >= 7
    first, last = _at(0.05, d), _at(0.95, d)
    for vital, sign in (("spo2", -1), ("respiration", 1), ("heart_rate", 1)):
        series = s[("p001", vital)]
        change = statistics.fmean(_between(series, last, _at(1, d))) - statistics.fmean(
            _between(series, _at(0, d), first)
        )
        assert sign * change > 5, (vital, change)
    sbp = [v["systolic"] for _, v in s[("p001", "blood_pressure")]]
    assert sbp[-1] < sbp[0]


def test_malformed_scenario_interleaves_about_one_percent() -> None:
    msgs = list(generate_ward("w1", 5, START_MS, 600, scenario="malformed", seed=1))
    bad = [m for m in msgs if m.malformed_reason is not None]
    assert 0.005 < len(bad) / len(msgs) < 0.02
    assert len({m.malformed_reason for m in bad}) >= 12
    assert [m.ts_ms for m in msgs] == sorted(m.ts_ms for m in msgs)
    assert {m.patient for m in bad if m.malformed_reason != "bad_topic"} <= {f"p{i:03d}" for i in range(1, 6)}


def test_expected_counts_excludes_malformed() -> None:
    msgs = list(generate_ward("w1", 3, START_MS, 300, scenario="malformed", seed=1))
    clean = list(generate_ward("w1", 3, START_MS, 300, scenario="normal", seed=1))
    counts = expected_counts(msgs)
    assert counts == expected_counts(clean)
    assert sum(counts.values()) == len(msgs) - sum(m.malformed_reason is not None for m in msgs)
    assert all(vital for _, vital in counts)


# -- malformed messages --------------------------------------------------------------------


def test_malformed_messages_cover_at_least_12_reasons() -> None:
    msgs = malformed_messages("w1", 60, start_ms=START_MS)
    assert len(msgs) == 60
    reasons = {m.malformed_reason for m in msgs}
    assert None not in reasons
    assert len(reasons) >= 12
    assert reasons == set(MALFORMED_REASONS)
    assert all(m.vital == "" for m in msgs)
    assert [m.ts_ms for m in msgs] == [START_MS + 10 * i for i in range(60)]


def test_malformed_messages_are_what_their_reason_says() -> None:
    day = 86_400_000
    for m in malformed_messages("w1", 3 * len(MALFORMED_REASONS), start_ms=START_MS):
        reason = m.malformed_reason
        parts = m.topic.split("/")
        if reason != "bad_topic":
            assert len(parts) == 4
            assert parts[:2] == ["monitorme", "w1"]
            assert parts[2] in {f"p{i:03d}" for i in range(1, 21)}
        if reason == "bad_topic":
            assert len(parts) != 4 or " " in parts[2] or len(parts[2]) > 64
        elif reason == "not_utf8":
            with pytest.raises(UnicodeDecodeError):
                m.payload.decode()
        elif reason == "not_json":
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(m.payload)
        elif reason == "not_object":
            assert not isinstance(orjson.loads(m.payload), dict)
        elif reason == "not_finite":
            assert any(w in m.payload for w in (b"NaN", b"Infinity"))
            assert str(m.ts_ms).encode() in m.payload
        elif reason == "payload_too_large":
            assert len(m.payload) >= 300_000
        else:
            body = orjson.loads(m.payload)
            ts = body.get("ts")
            if reason == "ts_in_future":
                assert ts == m.ts_ms + 10 * day
            elif reason == "ts_too_old":
                assert ts == m.ts_ms - 3 * day
            elif reason == "bad_timestamp":
                assert not isinstance(ts, int) or isinstance(ts, bool)
            elif reason == "missing_field":
                assert "ts" not in body or "value" not in body
            elif reason == "unknown_vital":
                assert parts[3] not in VITALS
            else:
                assert ts == m.ts_ms


def test_malformed_message_patients_stay_within_the_ward() -> None:
    msgs = [malformed_message("w1", i, ts_ms=START_MS, patients=3) for i in range(45)]
    assert {m.patient for m in msgs} == {"p001", "p002", "p003"}


# -- publisher and CLI (no broker) ---------------------------------------------------------


def test_parse_url_forms() -> None:
    assert parse_url("mqtt://127.0.0.1:1883") == BrokerURL("127.0.0.1", 1883, tls=False)
    assert parse_url("mqtts://broker") == BrokerURL("broker", 8883, tls=True)
    assert parse_url("mqtt://u:p%3Aw@h:1884") == BrokerURL("h", 1884, False, "u", "p:w")
    with pytest.raises(ValueError, match="mqtt://"):
        parse_url("http://broker")


def test_publish_rejects_bad_options_before_connecting() -> None:
    with pytest.raises(ValueError, match="qos"):
        publish([], "mqtt://127.0.0.1:1", qos=2)
    with pytest.raises(ValueError, match="speed"):
        publish([], "mqtt://127.0.0.1:1", speed=0)


def _cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="monitorme")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["simulate", *argv])


def test_cli_parser_defaults() -> None:
    args = _cli_args("--ward", "w9")
    assert (args.ward, args.patients, args.speed, args.scenario) == ("w9", 20, 1.0, "normal")
    assert args.duration is None
    assert args.qos == 1
    assert args.func is cli.run


def test_cli_speed_zero_needs_a_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_cli_args("--ward", "w9", "--speed", "0")) == 2
    assert "--duration" in capsys.readouterr().err


def test_cli_unreachable_broker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = "mqtt://127.0.0.1:1"
    args = _cli_args("--ward", "w9", "--speed", "0", "--duration", "1", "--url", url)
    assert cli.run(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("simulate:")


# -- against a real broker -----------------------------------------------------------------


def _broker_url() -> str:
    return os.environ.get("MONITORME_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")


def _broker_listening(url: str) -> bool:
    broker = parse_url(url)
    try:
        with socket.create_connection((broker.host, broker.port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.mark.integration
def test_publish_2000_messages_all_arrive() -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    url = _broker_url()
    if not _broker_listening(url):
        pytest.skip(f"no MQTT broker at {url}")
    broker = parse_url(url)
    ward = f"simtest-{uuid.uuid4().hex[:12]}"
    messages = list(itertools.islice(generate_ward(ward, 10, START_MS, 600, scenario="malformed", seed=4), 2000))
    assert len(messages) == 2000

    received: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    # MQTT v5 with a large Receive Maximum: with v3.1.1 Mosquitto keeps only 20 messages in
    # flight plus 1000 queued (its defaults) and silently drops the rest for a subscriber that
    # falls behind a fast publisher, which would make this test measure the subscriber.
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
    connect_props.ReceiveMaximum = 65535
    if broker.username is not None:
        sub.username_pw_set(broker.username, broker.password)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            received.append((msg.topic, bytes(msg.payload)))

    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(broker.host, broker.port, properties=connect_props)
    sub.loop_start()
    try:
        sub.subscribe(f"monitorme/{ward}/#", qos=1)
        assert subscribed.wait(5)
        stats = publish(messages, url, qos=1)
        assert stats.sent == stats.acked == 2000
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with lock:
                if len(received) >= 2000:
                    break
            time.sleep(0.05)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert sorted(received) == sorted((m.topic, m.payload) for m in messages)

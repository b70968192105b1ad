"""The spool gives back exactly what it was given, in order, and survives a reopen (a restart)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitorme.adapters.spool import Spool, SpoolBusy, SpooledBatch, decode, encode
from monitorme.core.model import AuditEntry, PatientId, Reading, Rejection, Waveform

ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.dictionaries(st.sampled_from(["systolic", "diastolic"]), st.floats(allow_nan=False, allow_infinity=False),
                    min_size=1),
    st.sampled_from(["asleep", "awake"]),
    st.builds(Waveform, st.sampled_from([250.0, 500.0]), st.binary(max_size=4000).map(lambda b: b[:len(b) // 4 * 4])),
)
readings = st.builds(Reading, ids.map(PatientId), ids, st.integers(0, 2**52), values,
                     st.none() | ids, st.none() | st.integers(0, 2**40), st.integers(0, 2**52))
rejections = st.builds(Rejection, st.text(max_size=80), ids, st.text(max_size=200), st.binary(max_size=300),
                       st.integers(0, 10**6), st.integers(0, 2**52))
audit = st.builds(AuditEntry, st.integers(0, 2**52), ids, ids, ids, st.none() | ids, st.none() | ids, st.just("{}"))
batches = st.builds(SpooledBatch, st.lists(readings, max_size=20), st.lists(rejections, max_size=5),
                    st.lists(ids, max_size=5), st.just([]), st.lists(audit, max_size=3))


@given(batch=batches)
def test_encode_decode_round_trip(batch: SpooledBatch) -> None:
    assert decode(encode(batch)) == batch


@settings(max_examples=25, deadline=None)
@given(many=st.lists(batches, min_size=1, max_size=6))
def test_batches_come_back_in_order_after_a_reopen_and_go_once_removed(many: list[SpooledBatch]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_reopen(Path(tmp) / "spool", many)


def check_reopen(directory: Path, many: list[SpooledBatch]) -> None:
    spool = Spool(directory, 1 << 30)
    for b in many:
        spool.append(encode(b))
    (directory / "000000000099.tmp").write_bytes(b"half a batch")  # a write cut short by a crash
    spool.close()
    reopened = Spool(directory, 1 << 30)
    assert reopened.batches == len(many) and reopened.bytes == spool.bytes
    got = list(reopened.oldest())
    assert [decode(data) for _, data in got] == many
    for path, data in got:
        reopened.remove(path, len(data))
    assert reopened.batches == 0 and reopened.bytes == 0 and not list(directory.glob("*"))
    reopened.close()


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    owner = Spool(tmp_path / "w1", 1 << 20)
    owner.append(encode(SpooledBatch(readings=[Reading(PatientId("p"), "spo2", 1, 97.0)])))
    (tmp_path / "w1" / "000000000002.tmp").write_bytes(b"being written")
    with pytest.raises(SpoolBusy, match="held by another process"):
        Spool(tmp_path / "w1", 1 << 20, wait_s=0.1)
    assert (tmp_path / "w1" / "000000000002.tmp").exists()  # a refused opener cleans up nothing
    other_ward = Spool(tmp_path / "w2", 1 << 20)  # wards do not share a lock
    owner.close()
    successor = Spool(tmp_path / "w1", 1 << 20)
    assert successor.batches == 1
    successor.close()
    other_ward.close()


def test_room_is_counted_in_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    data = encode(SpooledBatch(readings=[Reading(PatientId("p"), "ecg", 1, Waveform(250.0, b"\0" * 1000))] * 300))
    assert spool.has_room(len(data))
    while spool.has_room(len(data)):
        spool.append(data)
    assert spool.bytes <= 1 << 20 < spool.bytes + len(data)

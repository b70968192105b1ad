"""The MQTT wire decoder: whatever way TCP splits the bytes, every PUBLISH comes out once, intact, in order."""

from __future__ import annotations

import asyncio
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitorme.adapters import mqtt_wire as w


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


def publish_from_broker(topic: str, payload: bytes, qos: int, mid: int, v5: bool, props: bytes) -> bytes:
    """A PUBLISH as a broker would send it (MQTT 5: with ``props`` as its property block)."""
    body = struct.pack("!H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack("!H", mid)
    if v5:
        body += w.varint(len(props)) + props
    body += payload
    return bytes((w.PUBLISH << 4 | qos << 1,)) + w.varint(len(body)) + body


messages = st.lists(
    st.tuples(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).map(lambda t: "m/" + t),
        st.binary(max_size=3000),  # crosses the one-, two- and three-byte remaining lengths
        st.sampled_from([0, 1]),
        st.integers(1, 65_535),
        # a subscription identifier and a user property, which we must skip unread
        st.sampled_from([b"", b"\x0b\x07", b"\x26\x00\x01k\x00\x01v", b"\x26\x00\x7f" + b"k" * 127 + b"\x00\x00"]),
    ),
    max_size=30,
)


@pytest.mark.asyncio
@settings(max_examples=150, deadline=None)
@given(msgs=messages, cuts=st.lists(st.integers(0, 10**6), max_size=40), v5=st.booleans())
async def test_publishes_survive_any_split_of_the_stream(
    msgs: list[tuple[str, bytes, int, int, bytes]], cuts: list[int], v5: bool
) -> None:
    got: list[tuple[str, bytes, int, int]] = []
    proto = w.MqttWireProtocol(w.ConnectOptions("c", protocol=5 if v5 else 4),
                               lambda t, p, q, m, _at: got.append((t, p, q, m)))
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    stream = b"".join(publish_from_broker(t, p, q, m, v5, pr if v5 else b"") for t, p, q, m, pr in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        proto.data_received(stream[a:b])
    assert got == [(t, p, q, m if q else 0) for t, p, q, m, _ in msgs]
    assert not transport.aborted
    await asyncio.sleep(0)


@given(packet_ids=st.lists(st.integers(1, 65_535), max_size=50))
def test_pubacks_in_one_write_name_each_packet_id(packet_ids: list[int]) -> None:
    data = w.puback_packets(packet_ids)
    assert len(data) == 4 * len(packet_ids)
    assert [struct.unpack("!BBH", data[i:i + 4]) for i in range(0, len(data), 4)] == [
        (0x40, 2, mid) for mid in packet_ids]


@given(n=st.integers(0, 268_435_455))
def test_variable_byte_integers_round_trip(n: int) -> None:
    encoded = w.varint(n)
    assert len(encoded) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    assert w.read_varint(encoded + b"rest", 0) == (n, len(encoded))
    assert w.read_varint(encoded[:-1], 0) is None  # cut short: wait for more bytes


@pytest.mark.asyncio
async def test_a_refused_connect_and_a_qos2_publish_are_errors_not_silence() -> None:
    proto = w.MqttWireProtocol(w.ConnectOptions("c"), lambda *_: None)
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    assert transport.written.startswith(b"\x10")  # CONNECT went out first
    proto.data_received(bytes((w.CONNACK << 4, 3, 0, 0x87, 0)))  # 0x87: not authorized
    with pytest.raises(w.MqttWireError, match="0x87"):
        await proto.connack

    proto = w.MqttWireProtocol(w.ConnectOptions("c"), lambda *_: None)
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.data_received(publish_from_broker("a/b", b"x", 2, 7, True, b"")[:1] + b"\x08"
                        + publish_from_broker("a/b", b"x", 2, 7, True, b"")[2:])
    assert transport.aborted  # QoS 2 on our QoS 1 subscription: the connection is dropped, not half-handled

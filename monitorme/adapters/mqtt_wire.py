"""A small MQTT 5 / 3.1.1 client protocol on asyncio, owned for the ingest hot path.

Why not aiomqtt here: it runs paho's reader, which parses each packet header byte by byte and
each MQTT 5 property into objects, then hands every message through an asyncio queue. On this
machine that caps a subscriber at a few thousand QoS 1 messages per second (PERF.md) and it
costs most of a core at hospital load. As asyncpg does for PostgreSQL, we own the hot path
instead: ``data_received`` slices every complete PUBLISH out of the bytes the event loop read,
hands topic, payload and packet id to one callback, and nothing else. Acknowledgements are
written by the caller when it chooses (after commit), many PUBACKs in one ``write``.

Scope, deliberately narrow: a subscriber that also publishes QoS 1 (our alerts). No QoS 2,
no topic aliases (we announce none, so the broker must not use them), no will, no AUTH
exchange. What the broker sends that we do not expect closes the connection with a reason;
the source then reconnects, and the persistent session redelivers what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# packet types (high nibble of the fixed header)
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

# MQTT 5 property identifiers -> how their value is encoded (MQTT 5.0 §2.2.2.2)
_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_KIND = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BINARY, 0x0B: _VARINT, 0x11: _FOUR,
    0x12: _UTF8, 0x13: _TWO, 0x15: _UTF8, 0x16: _BINARY, 0x17: _BYTE, 0x18: _FOUR, 0x19: _BYTE,
    0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
REASON_STRING, SERVER_KEEP_ALIVE, RECEIVE_MAXIMUM, MAXIMUM_QOS = 0x1F, 0x13, 0x21, 0x24
SESSION_EXPIRY = 0x11
_MAX_REMAINING = 268_435_455  # the largest remaining length MQTT can encode


class MqttWireError(Exception):
    """The connection failed, was refused, or the broker broke the protocol."""


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """What goes into CONNECT."""

    client_id: str
    protocol: int = 5  # 5, or 4 for MQTT 3.1.1
    clean_start: bool = False
    keepalive_s: int = 30
    session_expiry_s: int = 86_400  # MQTT 5 only; 3.1.1 sessions last until the broker drops them
    receive_maximum: int = 20_000  # MQTT 5 only: unacknowledged QoS 1 messages the broker may send us
    username: str | None = None
    password: str | None = None


# -- encoding -------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """MQTT's variable byte integer.

    >>> varint(0), varint(127), varint(128), varint(16_383)
    (b'\\x00', b'\\x7f', b'\\x80\\x01', b'\\xff\\x7f')
    """
    if not 0 <= n <= _MAX_REMAINING:
        raise ValueError(f"{n} cannot be a variable byte integer")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + varint(len(body)) + body


def connect_packet(o: ConnectOptions) -> bytes:
    flags = (0x02 if o.clean_start else 0) | (0x80 if o.username is not None else 0)
    flags |= 0x40 if o.password is not None else 0
    body = _string("MQTT") + bytes((o.protocol, flags)) + struct.pack("!H", o.keepalive_s)
    if o.protocol == 5:
        props = bytes((SESSION_EXPIRY,)) + struct.pack("!I", o.session_expiry_s)
        props += bytes((RECEIVE_MAXIMUM,)) + struct.pack("!H", o.receive_maximum)
        body += varint(len(props)) + props
    body += _string(o.client_id)
    if o.username is not None:
        body += _string(o.username)
    if o.password is not None:
        body += _string(o.password)
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, topic: str, qos: int, protocol: int, no_local: bool) -> bytes:
    options = qos | (0x04 if no_local and protocol == 5 else 0)
    body = struct.pack("!H", packet_id) + (b"\x00" if protocol == 5 else b"") + _string(topic) + bytes((options,))
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def publish_packet(topic: str, payload: bytes, packet_id: int, protocol: int, *, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH."""
    body = _string(topic) + struct.pack("!H", packet_id) + (b"\x00" if protocol == 5 else b"") + payload
    return _packet(PUBLISH << 4 | 0x02 | (0x08 if dup else 0), body)


_PUBACK = struct.Struct("!BBH")  # type, remaining length 2, packet id (reason 0x00 is implied in MQTT 5)


def puback_packets(packet_ids: Iterable[int]) -> bytes:
    """PUBACKs for many messages, to go out in one write."""
    pack = _PUBACK.pack
    return b"".join([pack(PUBACK << 4, 2, mid) for mid in packet_ids])


# -- decoding ---------------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None when ``buf`` ends inside it."""
    value = 0
    shift = 0
    while pos < len(buf):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MqttWireError("malformed variable byte integer")
    return None


def read_properties(buf: bytes, pos: int) -> tuple[dict[int, object], int]:
    """Decode an MQTT 5 property block (rare packets only; PUBLISH properties are skipped unread)."""
    head = read_varint(buf, pos)
    if head is None:
        raise MqttWireError("truncated properties")
    length, pos = head
    end = pos + length
    props: dict[int, object] = {}
    while pos < end:
        ident = buf[pos]
        pos += 1
        kind = _PROPERTY_KIND.get(ident)
        if kind is None:
            raise MqttWireError(f"unknown property 0x{ident:02x}")
        value: object
        if kind == _BYTE:
            value, pos = buf[pos], pos + 1
        elif kind == _TWO:
            value, pos = int.from_bytes(buf[pos:pos + 2]), pos + 2
        elif kind == _FOUR:
            value, pos = int.from_bytes(buf[pos:pos + 4]), pos + 4
        elif kind == _VARINT:
            got = read_varint(buf, pos)
            if got is None:
                raise MqttWireError("truncated property")
            value, pos = got
        else:
            size = int.from_bytes(buf[pos:pos + 2])
            raw = buf[pos + 2:pos + 2 + size]
            pos += 2 + size
            if kind == _PAIR:
                size2 = int.from_bytes(buf[pos:pos + 2])
                raw = raw + b"=" + buf[pos + 2:pos + 2 + size2]
                pos += 2 + size2
            value = raw.decode("utf-8", "replace") if kind in (_UTF8, _PAIR) else raw
        props[ident] = value
    if pos != end:
        raise MqttWireError("properties overrun their length")
    return props, end


# topic, payload, qos, packet id (0 at QoS 0), when the bytes were read (epoch ms: one clock read per read)
OnPublish = Callable[[str, bytes, int, int, int], None]


class MqttWireProtocol(asyncio.Protocol):
    """One connection. ``on_publish`` is called for every PUBLISH, from inside ``data_received``."""

    def __init__(self, options: ConnectOptions, on_publish: OnPublish) -> None:
        self.options = options
        self.v5 = options.protocol == 5
        self.on_publish = on_publish
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._topics: dict[bytes, str] = {}  # topic bytes -> str, so each topic is decoded once
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[dict[int, object]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.session_present = False
        self._waiting: dict[int, asyncio.Future[int]] = {}  # our packet id -> SUBACK/PUBACK reason code
        self._next_id = 0
        self.heard = loop.time()  # when the broker last sent anything (keep-alive)
        self._pings = 0  # PINGREQs sent and PINGRESPs received: the broker answers in order,
        self._pongs = 0  # so pong number n means it has processed all we sent before ping n
        self._pong_waiters: list[tuple[int, asyncio.Future[None]]] = []

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport, as created
        transport.write(connect_packet(self.options))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        error = MqttWireError(f"connection lost: {exc}" if exc else "connection closed")
        if not self.connack.done():
            self.connack.set_exception(error)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(error)
        self._waiting.clear()
        for _, waiter in self._pong_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._pong_waiters.clear()
        if not self.closed.done():
            if exc is None:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(error)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        size = len(buf)
        on_publish = self.on_publish
        topics = self._topics
        v5 = self.v5
        received_ms = int(time.time() * 1000)
        try:
            while size - pos >= 2:
                first = buf[pos]
                # remaining length: one byte covers packets under 128 bytes, two under 16 KiB
                b1 = buf[pos + 1]
                if b1 < 0x80:
                    length, start = b1, pos + 2
                else:
                    got = read_varint(buf, pos + 1)
                    if got is None:
                        break
                    length, start = got
                end = start + length
                if end > size:
                    break
                if first >> 4 == PUBLISH:
                    qos = (first >> 1) & 0x03
                    tlen = (buf[start] << 8) | buf[start + 1]
                    at = start + 2 + tlen
                    raw_topic = buf[start + 2:at]
                    topic = topics.get(raw_topic)
                    if topic is None:
                        topic = raw_topic.decode("utf-8", "replace")
                        if len(topics) < 100_000:
                            topics[raw_topic] = topic
                    mid = 0
                    if qos:
                        if qos > 1:
                            raise MqttWireError(f"PUBLISH at QoS {qos} on a QoS 1 subscription")
                        mid = (buf[at] << 8) | buf[at + 1]
                        at += 2
                    if v5:  # PUBLISH properties: skipped unread (we announce no topic aliases)
                        plen = buf[at]
                        if plen < 0x80:
                            at += 1 + plen
                        else:
                            got = read_varint(buf, at)
                            if got is None:
                                raise MqttWireError("truncated PUBLISH properties")
                            at = got[1] + got[0]
                    if at > end:
                        raise MqttWireError("PUBLISH header longer than the packet")
                    on_publish(topic, buf[at:end], qos, mid, received_ms)
                else:
                    self._control(first, buf[start:end])
                pos = end
        except MqttWireError as exc:
            log.error("mqtt_protocol_error", extra={"error": str(exc)})
            self._buf = b""
            if self.transport is not None:
                self.transport.abort()
            return
        self._buf = buf[pos:] if pos < size else b""
        self.heard = asyncio.get_running_loop().time()

    # -- the rare packets ---------------------------------------------------------------------
    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBACK:
            mid = int.from_bytes(body[:2])
            fut = self._waiting.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(body[2] if len(body) > 2 else 0)
        elif kind == PINGRESP:
            self._pongs += 1
            if self._pong_waiters:
                due = [w for n, w in self._pong_waiters if n <= self._pongs]
                self._pong_waiters = [(n, w) for n, w in self._pong_waiters if n > self._pongs]
                for waiter in due:
                    if not waiter.done():
                        waiter.set_result(None)
        elif kind == SUBACK:
            mid = int.from_bytes(body[:2])
            at = read_properties(body, 2)[1] if self.v5 else 2
            fut = self._waiting.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(body[at] if at < len(body) else 0x80)
        elif kind == CONNACK:
            self.session_present = bool(body[0] & 0x01)
            reason = body[1]
            props = read_properties(body, 2)[0] if self.v5 else {}
            if reason:
                detail = props.get(REASON_STRING, "")
                error = MqttWireError(f"connection refused by the broker: reason 0x{reason:02x} {detail}".rstrip())
                if not self.connack.done():
                    self.connack.set_exception(error)
                return
            if not self.connack.done():
                self.connack.set_result(props)
        elif kind == DISCONNECT:
            reason = body[0] if body else 0
            props = read_properties(body, 1)[0] if self.v5 and len(body) > 1 else {}
            log.warning("mqtt_broker_disconnect",
                        extra={"reason": f"0x{reason:02x}", "detail": props.get(REASON_STRING, "")})
            if self.transport is not None:
                self.transport.close()
        else:
            raise MqttWireError(f"unexpected packet type {kind}")

    # -- what the caller does -----------------------------------------------------------------
    def packet_id(self) -> int:
        """The next packet id not awaiting an answer (1..65535)."""
        for _ in range(65_535):
            self._next_id = self._next_id % 65_535 + 1
            if self._next_id not in self._waiting:
                return self._next_id
        raise MqttWireError("all 65,535 packet ids are in flight")

    def ping(self) -> asyncio.Future[None]:
        """Send PINGREQ; the future is done when its PINGRESP arrives."""
        self.write(bytes((PINGREQ << 4, 0)))
        self._pings += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pong_waiters.append((self._pings, waiter))
        return waiter

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise MqttWireError("not connected")
        self.transport.write(data)

    def request(self, packet: bytes, packet_id: int) -> asyncio.Future[int]:
        """Send ``packet`` and return a future of the reason code in its SUBACK/PUBACK."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[packet_id] = fut
        try:
            self.write(packet)
        except MqttWireError:
            del self._waiting[packet_id]
            raise
        return fut


class MqttConnection:
    """A connected client: subscribe, publish at QoS 1, acknowledge, keep alive, close."""

    def __init__(self, protocol: MqttWireProtocol, connack: dict[int, object]) -> None:
        self.protocol = protocol
        self.options = protocol.options
        keepalive = connack.get(SERVER_KEEP_ALIVE, self.options.keepalive_s)
        self.keepalive_s = int(keepalive) if isinstance(keepalive, int) else self.options.keepalive_s
        # the broker's Receive Maximum bounds our unacknowledged publishes (Mosquitto: 20)
        receive_max = connack.get(RECEIVE_MAXIMUM, 65_535)
        self._inflight = asyncio.Semaphore(int(receive_max) if isinstance(receive_max, int) else 65_535)
        self._pinger = asyncio.ensure_future(self._keep_alive()) if self.keepalive_s else None

    @classmethod
    async def open(
        cls, host: str, port: int, options: ConnectOptions, on_publish: OnPublish,
        *, tls: ssl.SSLContext | None = None, timeout_s: float = 10.0,
    ) -> MqttConnection:
        """Connect and wait for a successful CONNACK."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: MqttWireProtocol(options, on_publish), host, port, ssl=tls,
                    server_hostname=host if tls else None,
                )
                connack = await protocol.connack
        except (OSError, TimeoutError) as exc:
            raise MqttWireError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        except MqttWireError:
            if "protocol" in locals() and protocol.transport is not None:
                protocol.transport.abort()
            raise
        return cls(protocol, connack)

    @property
    def session_present(self) -> bool:
        return self.protocol.session_present

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the connection ends; with an exception unless we closed it."""
        return self.protocol.closed

    async def subscribe(self, topic: str, qos: int = 1, *, no_local: bool = False, timeout_s: float = 10.0) -> int:
        """Subscribe; return the granted QoS."""
        p = self.protocol
        mid = p.packet_id()
        async with asyncio.timeout(timeout_s):
            granted = await p.request(subscribe_packet(mid, topic, qos, self.options.protocol, no_local), mid)
        if granted >= 0x80:
            raise MqttWireError(f"subscription to {topic!r} refused: reason 0x{granted:02x}")
        return granted

    async def publish(self, topic: str, payload: bytes, qos: int = 1, timeout_s: float = 10.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        if qos != 1:
            raise ValueError("only QoS 1 publishing is implemented")
        async with self._inflight:
            p = self.protocol
            mid = p.packet_id()
            async with asyncio.timeout(timeout_s):
                reason = await p.request(publish_packet(topic, payload, mid, self.options.protocol), mid)
        if reason >= 0x80:
            raise MqttWireError(f"publish to {topic!r} refused: reason 0x{reason:02x}")

    def ack(self, packet_ids: Iterable[int]) -> None:
        """Acknowledge received QoS 1 messages, all in one write."""
        data = puback_packets(packet_ids)
        if data:
            self.protocol.write(data)

    def pause_reading(self) -> None:
        """Stop reading the socket: TCP flow control then holds the broker back."""
        t = self.protocol.transport
        if t is not None and t.is_reading():
            t.pause_reading()

    def resume_reading(self) -> None:
        t = self.protocol.transport
        if t is not None and not t.is_closing() and not t.is_reading():
            t.resume_reading()

    async def settle(self, timeout_s: float = 5.0) -> None:
        """Return once the broker has processed everything sent so far (our acks above all).

        A PINGREQ round trip: the broker handles a connection's packets in order. Without it a
        quick reconnect can take over the session while PUBACKs still sit unread in the old
        socket; Mosquitto then drops them and redelivers those messages (seen in testing).
        """
        async with asyncio.timeout(timeout_s):
            await self.protocol.ping()

    async def _keep_alive(self) -> None:
        """PINGREQ every half period; give up on a broker that has been silent for 1.5 periods."""
        loop = asyncio.get_running_loop()
        interval = self.keepalive_s
        while True:
            await asyncio.sleep(interval / 2)
            p = self.protocol
            if p.transport is None:
                return
            silent = loop.time() - p.heard
            if silent > 1.5 * interval:
                log.warning("mqtt_keepalive_timeout", extra={"silent_s": round(silent, 1)})
                p.transport.abort()
                return
            # always ping: the broker times us out on what we send, and a QoS 0 stream sends nothing back
            p.ping()

    async def close(self) -> None:
        """DISCONNECT normally (the session and its unacknowledged messages stay with the broker)."""
        if self._pinger is not None:
            self._pinger.cancel()
        t = self.protocol.transport
        if t is not None and not t.is_closing():
            t.write(bytes((DISCONNECT << 4, 0)))
            t.close()
        try:
            async with asyncio.timeout(2):
                await asyncio.shield(self.protocol.closed)
        except (TimeoutError, MqttWireError):
            if self.protocol.transport is not None:
                self.protocol.transport.abort()

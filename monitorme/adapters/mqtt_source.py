"""Subscribe to a ward's readings and hand them over in batches, acknowledging only when told.

aiomqtt keeps the connection (TLS, keep-alive, reconnects); the per-message path is
ours: paho's ``on_message`` appends to a plain list, with no asyncio queue, task or
await per message (aiomqtt 2.x would also drop messages when its queue is full).
QoS 1 messages are acknowledged with paho's manual ack only once ``ack()`` is
called, after what they caused is committed; with MQTT 5 the broker may have at
most ``receive_maximum`` of them unacknowledged, which bounds our memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from monitorme.core.model import RawMessage
from monitorme.errors import ConfigError
from monitorme.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where and how to subscribe."""

    url: str
    ward: str
    client_id: str
    protocol: int = 5  # 5, or 4 for MQTT 3.1.1 brokers (e.g. amqtt)
    qos: int = 1
    receive_maximum: int = 20_000  # unacked QoS 1 messages the broker may send us (< 65,535)
    session_expiry_s: int = 86_400  # the broker keeps our queue this long while we are away
    keepalive_s: int = 30
    ca_file: str | None = None
    max_buffered_qos0: int = 100_000
    reconnect_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_mqtt_url(url: str, key: str = "mqtt.url") -> BrokerAddress:
    """Parse ``mqtt[s]://[user[:password]@]host[:port]``.

    >>> parse_mqtt_url("mqtts://nurse:s%40cret@broker.local")
    BrokerAddress(host='broker.local', port=8883, tls=True, username='nurse', password='s@cret')
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(key, f"must be mqtt://host[:port] or mqtts://host[:port], got {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(key, f"has a bad port: {url!r}") from None
    return BrokerAddress(
        parts.hostname, port, tls,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


class MqttSource:
    """The ward's subscription; ``take()`` hands out what arrived, ``ack()`` confirms it."""

    def __init__(self, settings: MqttSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.address = parse_mqtt_url(settings.url)
        self._buffer: list[RawMessage] = []
        self._qos0_buffered = 0
        self.arrived = asyncio.Event()
        self.connected = False
        self._client: aiomqtt.Client | None = None
        self._generation = 0  # acks of messages from an older connection are void
        self._alerts_suffix = "/alerts"
        metrics.describe("monitorme_mqtt_received_total", "counter", "MQTT messages received.")
        metrics.gauge("monitorme_mqtt_buffered", lambda: len(self._buffer))

    # -- the hot path: called by paho inside the event loop's reader callback -----
    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        qos = msg.qos
        token = (self._generation, msg.mid) if qos else None
        topic = msg._topic.decode("utf-8", "replace")
        if topic.endswith(self._alerts_suffix):
            # Our own alert feed shares the wildcard; it is output, not a reading.
            if token is not None:
                self._ack_now(token)
            return
        if not qos:
            if self._qos0_buffered >= self.settings.max_buffered_qos0:
                self.metrics.inc("monitorme_mqtt_dropped_total", reason="qos0_buffer_full")
                return
            self._qos0_buffered += 1
        self._buffer.append(RawMessage(topic, msg.payload, int(time.time() * 1000), token))
        self.arrived.set()

    @property
    def client(self) -> aiomqtt.Client | None:
        """The connected client, for publishing on the same connection (None while away)."""
        return self._client if self.connected else None

    def __len__(self) -> int:
        return len(self._buffer)

    def take(self, limit: int) -> list[RawMessage]:
        """Remove and return up to ``limit`` messages in arrival order."""
        buffer = self._buffer
        if len(buffer) <= limit:
            batch, self._buffer = buffer, []
        else:
            batch, self._buffer = buffer[:limit], buffer[limit:]
        if not self._buffer:
            self.arrived.clear()
        self._qos0_buffered = max(0, self._qos0_buffered - sum(1 for m in batch if m.ack is None))
        self.metrics.inc("monitorme_mqtt_received_total", len(batch))
        return batch

    def ack(self, tokens: Iterable[object]) -> None:
        """Acknowledge messages (in receipt order) whose effects are now durable."""
        client = self._client
        if client is None:
            return
        paho = client._client
        generation = self._generation
        stale = 0
        for token in tokens:
            gen, mid = cast(tuple[int, int], token)
            if gen == generation:
                paho.ack(mid, 1)
            else:
                stale += 1  # the broker resends those; the store de-duplicates them
        if stale:
            self.metrics.inc("monitorme_mqtt_stale_acks_total", stale)

    def _ack_now(self, token: tuple[int, int]) -> None:
        if self._client is not None:
            self._client._client.ack(token[1], 1)

    # -- connection management ----------------------------------------------------
    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        a = self.address
        tls_context = None
        if a.tls:
            tls_context = ssl.create_default_context(cafile=s.ca_file)
        if s.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
            props.SessionExpiryInterval = s.session_expiry_s
            props.ReceiveMaximum = s.receive_maximum
            client = aiomqtt.Client(
                a.host, a.port, username=a.username, password=a.password,
                identifier=s.client_id, protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False, properties=props, keepalive=s.keepalive_s,
                tls_context=tls_context, timeout=10, max_inflight_messages=1000,
            )
        else:
            client = aiomqtt.Client(
                a.host, a.port, username=a.username, password=a.password,
                identifier=s.client_id, protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=False, keepalive=s.keepalive_s, tls_context=tls_context, timeout=10,
                max_inflight_messages=1000,  # our alert publications: a burst goes out at once
            )
        paho = client._client
        paho.manual_ack_set(True)
        paho.on_message = self._on_message
        return client

    async def run(self, stop: asyncio.Event) -> None:
        """Stay subscribed until ``stop``; reconnect with jittered, capped backoff."""
        attempt = 0
        # '#' rather than '+/+': a device publishing to a malformed deeper topic is
        # then rejected and dead-lettered as bad_topic instead of vanishing unseen.
        topic = f"monitorme/{self.settings.ward}/#"
        while not stop.is_set():
            client = self._make_client()
            try:
                async with client:
                    self._generation += 1
                    self._client = client
                    if self.settings.protocol == 5:
                        # no_local: our own alert publications do not come back to us
                        options = SubscribeOptions(qos=self.settings.qos, noLocal=True)
                        await client.subscribe(topic, options=options)
                    else:
                        await client.subscribe(topic, qos=self.settings.qos)
                    self.connected = True
                    attempt = 0
                    log.info("mqtt_connected", extra={"host": self.address.host, "port": self.address.port})
                    await self._wait_disconnect_or_stop(client, stop)
            except aiomqtt.MqttError as exc:
                attempt += 1
                delay = random.uniform(0, min(self.settings.reconnect_max_s, 0.5 * 2**attempt))
                log.warning("mqtt_reconnect", extra={"attempt": attempt, "error": str(exc), "delay_s": round(delay, 2)})
                self.metrics.inc("monitorme_mqtt_reconnects_total")
            finally:
                self.connected = False
                self._client = None
            if not stop.is_set() and attempt:
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def _wait_disconnect_or_stop(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        disconnected: asyncio.Future[None] = client._disconnected  # aiomqtt's own "connection lost"
        stopper = asyncio.ensure_future(stop.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [disconnected, stopper]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if disconnected.done():
            exc = disconnected.exception()
            raise aiomqtt.MqttError(f"connection lost: {exc}")

    async def drain_acks(self) -> None:
        """Give paho a moment to write pending PUBACKs before the connection closes."""
        client = self._client
        if client is not None:
            paho = client._client
            for _ in range(50):
                if not paho._out_packet:
                    return
                await asyncio.sleep(0.01)

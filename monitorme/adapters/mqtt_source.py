"""Subscribe to a ward's readings and hand them over in batches, acknowledging only when told.

The connection is our own MQTT protocol (``mqtt_wire``): every PUBLISH the event loop reads
is appended to a plain list, with no asyncio queue, task or await per message. QoS 1
messages are acknowledged only once ``ack()`` is called, after what they caused is
committed; with MQTT 5 the broker may have at most ``receive_maximum`` of them
unacknowledged, which bounds our memory. bench/ingest.py measures this path beside bare
aiomqtt and paho subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

from monitorme.adapters.mqtt_wire import ConnectOptions, MqttConnection, MqttWireError
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
    cert_file: str | None = None  # client certificate for brokers that authenticate clients by TLS
    key_file: str | None = None
    max_buffered_qos0: int = 100_000
    # Our own bound on messages taken off the socket but not yet handed to the processor. Receive
    # Maximum should bound it already, but Mosquitto 2.0.11 was seen sending a 2,580-message
    # backlog at once to a session with Receive Maximum 20 right after its first PUBACK
    # (bench/ack_cost.py); so past this many we stop reading and let TCP hold the broker back.
    max_buffered: int = 20_000
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
        self._connection: MqttConnection | None = None
        self._generation = 0  # acks of messages from an older connection are void
        self._own_alerts: list[tuple[int, int]] = []
        self._paused = False  # socket reading paused: too much taken in, not yet processed
        self._alerts_suffix = "/alerts"
        metrics.describe("monitorme_mqtt_received_total", "counter", "MQTT messages received.")
        metrics.gauge("monitorme_mqtt_buffered", lambda: len(self._buffer))

    # -- the hot path: called from the protocol's data_received, once per PUBLISH --------
    def _on_publish(self, topic: str, payload: bytes, qos: int, mid: int, received_ms: int) -> None:
        token = (self._generation, mid) if qos else None
        if topic.endswith(self._alerts_suffix):
            # Our own alert feed shares the wildcard (MQTT 3.1.1 has no no_local); it is output,
            # not a reading: acknowledged with the next batch taken.
            if token is not None:
                self._own_alerts.append(token)
                self.arrived.set()
            return
        if not qos:
            if self._qos0_buffered >= self.settings.max_buffered_qos0:
                self.metrics.inc("monitorme_mqtt_dropped_total", reason="qos0_buffer_full")
                return
            self._qos0_buffered += 1
        buffer = self._buffer
        buffer.append(RawMessage(topic, payload, received_ms, token))
        if not self.arrived.is_set():
            self.arrived.set()
        if len(buffer) >= self.settings.max_buffered and self._connection is not None and not self._paused:
            self._paused = True
            self._connection.pause_reading()
            self.metrics.inc("monitorme_mqtt_read_pauses_total")

    @property
    def client(self) -> MqttConnection | None:
        """The connection, for publishing alerts on it (None while away)."""
        return self._connection if self.connected else None

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
        if self._paused and len(self._buffer) < self.settings.max_buffered // 2 and self._connection is not None:
            self._paused = False
            self._connection.resume_reading()
        if self._own_alerts:
            self.ack(self._own_alerts)
            self._own_alerts = []
        if self._qos0_buffered:
            self._qos0_buffered = max(0, self._qos0_buffered - sum(1 for m in batch if m.ack is None))
        self.metrics.inc("monitorme_mqtt_received_total", len(batch))
        return batch

    def ack(self, tokens: Iterable[object]) -> None:
        """Acknowledge messages (in receipt order) whose effects are now durable."""
        connection = self._connection
        if connection is None:
            return
        generation = self._generation
        mids: list[int] = []
        stale = 0
        for token in tokens:
            gen, mid = cast(tuple[int, int], token)
            if gen == generation:
                mids.append(mid)
            else:
                stale += 1  # the broker resends those; the store de-duplicates them
        if stale:
            self.metrics.inc("monitorme_mqtt_stale_acks_total", stale)
        with contextlib.suppress(MqttWireError):  # gone: the broker redelivers them to the next connection
            connection.ack(mids)

    # -- connection management ----------------------------------------------------------
    def _options(self) -> ConnectOptions:
        s = self.settings
        return ConnectOptions(
            client_id=s.client_id, protocol=s.protocol, clean_start=False, keepalive_s=s.keepalive_s,
            session_expiry_s=s.session_expiry_s, receive_maximum=s.receive_maximum,
            username=self.address.username, password=self.address.password,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Stay subscribed until ``stop``; reconnect with jittered, capped backoff."""
        attempt = 0
        # '#' rather than '+/+': a device publishing to a malformed deeper topic is
        # then rejected and dead-lettered as bad_topic instead of vanishing unseen.
        topic = f"monitorme/{self.settings.ward}/#"
        a = self.address
        tls = None
        if a.tls:  # server certificate and hostname always verified
            tls = ssl.create_default_context(cafile=self.settings.ca_file)
            if self.settings.cert_file:
                tls.load_cert_chain(self.settings.cert_file, self.settings.key_file or None)
        while not stop.is_set():
            connection: MqttConnection | None = None
            try:
                self._generation += 1
                connection = await MqttConnection.open(a.host, a.port, self._options(), self._on_publish, tls=tls)
                self._connection = connection
                self._paused = False  # a new socket reads from the start
                # no_local: our own alert publications do not come back to us (MQTT 5)
                await connection.subscribe(topic, self.settings.qos, no_local=True)
                self.connected = True
                attempt = 0
                log.info("mqtt_connected", extra={"host": a.host, "port": a.port, "protocol": self.settings.protocol,
                                                  "receive_maximum": self.settings.receive_maximum,
                                                  "session_present": connection.session_present})
                await self._wait_disconnect_or_stop(connection, stop)
            except Exception as exc:  # whatever broke the connection, reconnect: never stop listening
                attempt += 1
                delay = random.uniform(0, min(self.settings.reconnect_max_s, 0.5 * 2**attempt))
                log.warning("mqtt_reconnect", extra={"attempt": attempt, "error": str(exc), "delay_s": round(delay, 2)})
                self.metrics.inc("monitorme_mqtt_reconnects_total")
            finally:
                self.connected = False
                if connection is not None:
                    await connection.close()
                self._connection = None
            if not stop.is_set() and attempt:
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass

    @staticmethod
    async def _wait_disconnect_or_stop(connection: MqttConnection, stop: asyncio.Event) -> None:
        closed = connection.closed
        stopper = asyncio.ensure_future(stop.wait())
        try:
            waiters: list[asyncio.Future[object]] = [closed, stopper]  # type: ignore[list-item]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if closed.done():
            exc = closed.exception()
            raise MqttWireError(str(exc) if exc else "connection closed by the broker")

    async def drain_acks(self) -> None:
        """Wait until the broker has processed the PUBACKs sent so far (before the connection closes)."""
        connection = self._connection
        if connection is not None:
            try:
                await connection.settle()
            except (MqttWireError, TimeoutError) as exc:  # unsettled acks mean redelivery, never loss
                log.warning("mqtt_acks_unsettled", extra={"error": str(exc)})

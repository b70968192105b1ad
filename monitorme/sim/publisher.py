"""Publish simulated messages to an MQTT broker, fast or paced by event time."""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from monitorme.sim.model import SimMessage

__all__ = ["BrokerURL", "PublishStats", "parse_url", "publish"]

_DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}
# Unacknowledged messages allowed before publish() waits: bounds memory on endless runs and
# keeps paho's mid space (65535) from wrapping onto a message still in flight.
_MAX_OUTSTANDING: Final = 20_000
# Below this lead, sleeping costs more than it saves when pacing.
_MIN_SLEEP_S: Final = 0.002


@dataclass(frozen=True, slots=True)
class PublishStats:
    """What one publish run did: messages handed to the client, acknowledged, and wall seconds.

    For QoS 0, `acked` counts messages written to the socket.
    """

    sent: int
    acked: int
    seconds: float

    @property
    def rate(self) -> float:
        """Messages sent per wall-clock second."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """A parsed `mqtt://` or `mqtts://` broker address, credentials included."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


def parse_url(url: str) -> BrokerURL:
    """Parse `mqtt[s]://[user[:password]@]host[:port]`.

    >>> parse_url("mqtts://nurse:s%40cret@broker.local")
    BrokerURL(host='broker.local', port=8883, tls=True, username='nurse', password='s@cret')

    Raises:
        ValueError: another scheme, or no host.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"broker URL has no host: {url!r}")
    return BrokerURL(
        host=parts.hostname,
        port=parts.port or _DEFAULT_PORTS[scheme],
        tls=scheme == "mqtts",
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class _Tracker:
    """Counts messages handed to paho and their acknowledgements, across paho's thread.

    A PUBACK can arrive before publish() has returned its mid to us, so acks for mids we
    do not know yet are parked in `_early` and matched when the mid shows up.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.sent = 0
        self.acked = 0
        self._pending: set[int] = set()
        self._early: set[int] = set()

    def outstanding(self) -> int:
        return len(self._pending)

    def on_sent(self, mid: int) -> None:
        with self.cond:
            self.sent += 1
            if mid in self._early:
                self._early.discard(mid)
                self.acked += 1
                self.cond.notify_all()
            else:
                self._pending.add(mid)

    def on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        _reason_code: ReasonCode,
        _properties: Any,
    ) -> None:
        with self.cond:
            if mid in self._pending:
                self._pending.discard(mid)
                self.acked += 1
                self.cond.notify_all()
            else:
                self._early.add(mid)


def _connect(broker: BrokerURL, client_id: str, timeout_s: float) -> tuple[mqtt.Client, _Tracker]:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
    )
    # Many messages in flight and an unbounded client queue: the broker sets the pace.
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set_context(ssl.create_default_context())

    tracker = _Tracker()
    connected = threading.Event()
    failure: list[str] = []

    def on_connect(
        _client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _properties: Any,
    ) -> None:
        if reason_code.is_failure:
            failure.append(str(reason_code))
        connected.set()

    client.on_connect = on_connect
    client.on_publish = tracker.on_publish
    client.connect(broker.host, broker.port, keepalive=60)
    client.loop_start()
    if not connected.wait(timeout_s) or failure:
        client.loop_stop()
        why = failure[0] if failure else f"no CONNACK within {timeout_s:g} s"
        raise ConnectionError(f"MQTT connect to {broker.host}:{broker.port} failed: {why}")
    return client, tracker


def publish(
    messages: Iterable[SimMessage],
    url: str,
    *,
    qos: int = 1,
    speed: float | None = None,
    client_id: str | None = None,
    ack_timeout_s: float = 30.0,
    stop: threading.Event | None = None,
) -> PublishStats:
    """Publish `messages` in order and wait until the broker has acknowledged them.

    Args:
        messages: what to send, sorted by `ts_ms` (may be endless when `stop` is given).
        url: `mqtt://` or `mqtts://` (TLS, system CAs) broker URL, optionally with
            `user:password@`.
        qos: 0 or 1.
        speed: None publishes as fast as the broker accepts; X paces by event time at
            X times real time.
        client_id: MQTT client id; a unique one by default.
        ack_timeout_s: how long to wait for the last acknowledgements (and the CONNACK).
        stop: when set, stop taking messages, wait for the acknowledgements and return.

    Returns:
        PublishStats; `acked < sent` means the timeout expired first.

    Raises:
        ValueError: bad URL, qos or speed.
        ConnectionError, OSError: the broker could not be reached.
    """
    if qos not in (0, 1):
        raise ValueError(f"qos must be 0 or 1, got {qos}")
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be > 0 or None, got {speed}")
    broker = parse_url(url)
    cid = client_id or f"monitorme-sim-{os.getpid()}-{os.urandom(4).hex()}"
    client, tracker = _connect(broker, cid, ack_timeout_s)
    started = time.monotonic()
    try:
        first_ts: int | None = None
        for message in messages:
            if stop is not None and stop.is_set():
                break
            if speed is not None:
                if first_ts is None:
                    first_ts = message.ts_ms
                lead = started + (message.ts_ms - first_ts) / 1000.0 / speed - time.monotonic()
                if lead > _MIN_SLEEP_S and _sleep(lead, stop):
                    break
            if tracker.outstanding() >= _MAX_OUTSTANDING:
                with tracker.cond:
                    tracker.cond.wait_for(lambda: tracker.outstanding() < _MAX_OUTSTANDING)
            info = client.publish(message.topic, message.payload, qos=qos)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or qos > 0:
                # QoS 1 messages paho could not send yet stay queued and go out on reconnect.
                tracker.on_sent(info.mid)
        with tracker.cond:
            tracker.cond.wait_for(lambda: tracker.outstanding() == 0, timeout=ack_timeout_s)
            sent, acked = tracker.sent, tracker.acked
        return PublishStats(sent=sent, acked=acked, seconds=time.monotonic() - started)
    finally:
        client.disconnect()
        client.loop_stop()


def _sleep(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep, waking early if `stop` is set; True when stopped."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)

"""A paho client driven from one thread, with a sliding window of unacknowledged publishes.

No network thread: ``publish`` writes straight to the socket and ``service`` reads the
acknowledgements, so the caller's pacing loop and paho never contend for the GIL. At QoS 1 at
most ``window`` publishes are unacknowledged: a new one goes out as soon as any is
acknowledged (waiting on fixed batches stalls on Nagle and delayed ACKs; see perf.md).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Hashable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The broker could not be reached, or the connection was lost and not regained."""


class WindowedPublisher:
    """Publishes and counts, per caller-given key, what the broker acknowledged.

    At QoS 0 a message counts once paho has handed it to the socket: nothing more is known.
    """

    def __init__(
        self, host: str, port: int, qos: int = 1, window: int = 1000, client_id: str = ""
    ) -> None:
        if qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        self.host, self.port, self.qos, self.window = host, port, qos, window
        self.acked: Counter[Hashable] = Counter()
        self.failed = 0
        self.disconnects = 0
        self._keys: dict[int, Hashable] = {}  # mid -> key, for unacknowledged publishes
        self._connected = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        # Our own window bounds what is unacknowledged. paho's limit stays off (0): with one
        # set, paho rescans every unacknowledged message on each PUBACK, O(window) per ack.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    @property
    def inflight(self) -> int:
        return len(self._keys)

    def connect(self, timeout: float = 10.0) -> None:
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as error:
            raise PublishError(f"cannot reach the broker at {self.host}:{self.port}: {error}") from None
        self._wait(lambda: self._connected, timeout, "no CONNACK from the broker")

    def publish(self, topic: str, payload: bytes, key: Hashable) -> None:
        """Send one message, first waiting for room in the window (QoS 1 and 2)."""
        while self.qos and len(self._keys) >= self.window:
            self.service(0.05)
        if self.qos == 0:
            while self._client.want_write():  # keep paho's own queue short
                self.service(0.01)
        info = self._client.publish(topic, payload, qos=self.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.failed += 1
        elif self.qos == 0:
            self.acked[key] += 1
        else:
            self._keys[info.mid] = key

    def service(self, timeout: float) -> None:
        """Read acknowledgements and keep the connection alive, for up to ``timeout`` s."""
        rc = self._client.loop(timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS and not self._connected:
            self._reconnect()

    def flush(self, timeout: float) -> bool:
        """Wait until every publish is acknowledged; whether that happened in time."""
        deadline = time.monotonic() + timeout
        while (self._keys or self._client.want_write()) and time.monotonic() < deadline:
            self.service(0.05)
        return not self._keys

    def close(self) -> None:
        self._connected = False  # so that our own DISCONNECT is not reported as a loss
        self._client.disconnect()
        self._client.loop(0.1)

    def _reconnect(self) -> None:
        time.sleep(0.2)  # the broker is gone: do not spin; paho resends the window on success
        try:
            self._client.reconnect()
        except OSError as error:
            log.debug("reconnect failed: %s", error)

    def _wait(self, done: Any, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise PublishError(f"{self.host}:{self.port}: {message} in {timeout} s")
            self._client.loop(0.05)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self._connected = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self._connected:
            self.disconnects += 1
            log.warning("lost the broker (%s); reconnecting", reason)
        self._connected = False

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        key = self._keys.pop(mid, None)
        if key is not None:
            self.acked[key] += 1

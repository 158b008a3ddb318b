"""One virtual device of ``edge-sim fleet``: an outbox in memory and the real sync protocol.

It behaves like the agent's uploader, lightly: window summaries get growing ``seq`` numbers
and wait in a bounded backlog; batches go to ``<prefix>/<id>/data`` at QoS 1 (encoded by
``cloud_sync.protocol``, never by hand); a record leaves the backlog only once the ingest's
retained ``ack`` covers it; status is retained with a Last Will saying ``online: false``.
After a reconnect, or when no ack came for ``ack_timeout``, everything unacknowledged is sent
again. The fleet drives it from one asyncio loop (see ``simulators/mqtt_async.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import codec
from agent.backoff import Backoff
from cloud_sync import protocol
from cloud_sync.protocol import DroppedRange, Encoder, ProtocolError, RawRow
from simulators.mqtt_async import bind_to_loop
from simulators.signals import KINDS, NO_FAULTS, Sensor

log = logging.getLogger(__name__)

STREAM = "win"  # what the agent's window module would be called in a demo config


@dataclass(frozen=True)
class DeviceOptions:
    """How every device of a fleet behaves; times in seconds."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "edge"
    interval: float = 10.0  # one summary per sensor per interval
    sensors: int = 3
    status_interval: float = 30.0
    keepalive: int = 60
    batch_max: int = 500
    backlog_max: int = 10_000
    ack_timeout: float = 60.0
    reconnect_max: float = 60.0  # the reconnect delay doubles from 1 s up to this, full jitter
    compression: str = "zlib"  # zstd keeps ~50 KB of context per device: 500 MB for 10,000


@dataclass
class DeviceCounts:
    produced: int = 0
    batches: int = 0
    resends: int = 0
    dropped: int = 0
    connects: int = 0
    outages: int = 0


class VirtualDevice:
    """A device id, its backlog of unacknowledged records and its MQTT client."""

    def __init__(self, device_id: str, options: DeviceOptions, seed: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.id = protocol.check_device_id(device_id)
        self.options = options
        self.counts = DeviceCounts()
        self.connected = False
        self.acked = 0  # the ingest's ack: every seq up to here is stored
        self.next_seq = 1
        self.cut_off = False  # in a scheduled outage: stay away
        self._loop = loop
        rng = random.Random(f"{seed}:{device_id}")
        self.next_record_at = time.monotonic() + rng.uniform(0, options.interval)
        self.next_status_at = time.monotonic() + rng.uniform(0, options.status_interval)
        kinds = [list(KINDS.values())[i % len(KINDS)] for i in range(options.sensors)]
        names = [f"{kind.prefix}-{i:03d}" for i, kind in enumerate(kinds)]
        # One generator per device, seeded by its id: each device gets signals of its own.
        self._sensors = [(name, Sensor(name, kind, seed, NO_FAULTS, rng=rng))
                         for name, kind in zip(names, kinds, strict=True)]
        self._t0 = time.monotonic()
        self._epoch = secrets.token_hex(8)  # new each run, so no old retained ack matches
        self._encoder = Encoder(self.id, self._epoch, options.compression)
        self._backlog: deque[RawRow] = deque()
        self._dropped: list[DroppedRange] = []
        self._sent_upto = 0
        self._last_ack_at = time.monotonic()
        self._started = time.time()
        self._backoff = Backoff(1.0, max(1.0, options.reconnect_max), rng)
        self._topics = {kind: protocol.topic(options.topic_prefix, self.id, kind)
                        for kind in ("data", "status", "ack")}
        self.client = self._client()

    # -- the record side -----------------------------------------------------------------------

    def produce(self, now: float) -> None:
        """One window summary per sensor, for the interval that just ended."""
        end = time.time()
        start = end - self.options.interval
        for name, sensor in self._sensors:
            value = sensor.reading(now - self._t0)
            data = {"sensor": name, "start": round(start, 3), "end": round(end, 3),
                    "count": int(self.options.interval), "mean": value, "min": value,
                    "max": value}
            self._backlog.append((self.next_seq, STREAM, end, codec.dumps(data)))
            self.next_seq += 1
            self.counts.produced += 1
        self._bound_backlog()
        self.next_record_at += self.options.interval

    def _bound_backlog(self) -> None:
        """Drop the oldest past ``backlog_max`` and announce it, as the agent's outbox would."""
        while len(self._backlog) > self.options.backlog_max:
            seq = self._backlog.popleft()[0]
            self.counts.dropped += 1
            last = self._dropped[-1] if self._dropped else None
            if last is not None and last.last == seq - 1:
                self._dropped[-1] = DroppedRange(last.first, seq, "backlog_full")
            else:
                self._dropped.append(DroppedRange(seq, seq, "backlog_full"))

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    # -- sending -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send, in batches, what this connection has not sent yet."""
        if not self.connected:
            return
        unsent = [row for row in self._backlog if row[0] > self._sent_upto]
        for first in range(0, len(unsent), self.options.batch_max):
            rows = unsent[first:first + self.options.batch_max]
            payload = self._encoder.encode(rows, self.acked, self._dropped)
            self.client.publish(self._topics["data"], payload, qos=1)
            self._sent_upto = rows[-1][0]
            self.counts.batches += 1
        if not unsent and self._dropped and self._sent_upto < self._dropped[-1].last:
            # Only dropped records are owed: announce them so the ack can move past.
            self.client.publish(self._topics["data"],
                                self._encoder.encode([], self.acked, self._dropped), qos=1)
            self._sent_upto = self._dropped[-1].last

    def publish_status(self, online: bool = True) -> None:
        oldest = self._backlog[0][2] if self._backlog else None
        status: dict[str, Any] = {
            "online": online,
            "version": "edge-sim",
            "epoch": self._epoch,
            "uptime_s": round(time.time() - self._started, 1),
            "last_ack": {"seq": self.acked},
            "last_seq": self.next_seq - 1,
            "backlog": {
                "rows": len(self._backlog),
                "bytes": sum(len(row[3]) for row in self._backlog),
                "oldest_unsent_age_s": None if oldest is None
                else round(max(0.0, time.time() - oldest), 1),
            },
            "dropped": {"backlog_full": self.counts.dropped} if self.counts.dropped else {},
        }
        self.client.publish(self._topics["status"], protocol.encode_status(status), qos=1,
                            retain=True)
        self.next_status_at = time.monotonic() + self.options.status_interval

    def check_acks(self, now: float) -> None:
        """Send everything unacknowledged again when the ingest has been silent too long."""
        if (self.connected and self._sent_upto > self.acked
                and now - self._last_ack_at > self.options.ack_timeout):
            self.counts.resends += 1
            self._sent_upto = self.acked
            self._last_ack_at = now
            self.flush()

    # -- the connection ------------------------------------------------------------------------

    def connect(self) -> None:
        if self.cut_off or self.connected:
            return
        try:
            self.client.connect(self.options.host, self.options.port, self.options.keepalive)
        except OSError as error:
            log.debug("%s: connect failed: %s", self.id, error)
            self._retry_later()

    def cut(self) -> None:
        """A scheduled outage: the link dies under the device (no DISCONNECT, so the broker
        publishes the Last Will); records keep piling up until ``restore``."""
        self.cut_off = True
        self.counts.outages += 1
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)  # paho sees EOF on its next read and lets go

    def restore(self) -> None:
        self.cut_off = False
        self._backoff.reset()
        self.connect()

    def disconnect(self) -> None:
        """A polite goodbye: retained ``online: false`` (a clean DISCONNECT suppresses the Will)."""
        self.cut_off = True
        if self.connected:
            self.publish_status(online=False)
            self.client.disconnect()

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-sim-{self.id}",
                             protocol=mqtt.MQTTv311)
        client.will_set(self._topics["status"],
                        protocol.encode_status({"online": False, "epoch": self._epoch}),
                        qos=1, retain=True)
        client.max_inflight_messages_set(0)  # batches are bounded by backlog_max already
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        bind_to_loop(client, self._loop)
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused the connection: %s", self.id, reason)
            return
        self.connected = True
        self.counts.connects += 1
        self._backoff.reset()
        client.subscribe(self._topics["ack"], qos=1)
        self.publish_status()
        self._sent_upto = self.acked  # the session is new: everything unacked goes again
        self._last_ack_at = time.monotonic()
        self.flush()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        """A refused ack subscription (NATS refuses one while its JetStream elects a leader)
        would leave the device deaf to acks for good: drop the link and start over, as the
        agent's uploader does."""
        if any(reason.is_failure for reason in reasons):
            log.warning("%s: the broker refused the ack subscription; reconnecting", self.id)
            client.disconnect()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected = False
        if not self.cut_off:
            self._retry_later()

    def _retry_later(self) -> None:
        self._loop.call_later(self._backoff.next_delay(), self.connect)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            ack = protocol.decode_ack(bytes(message.payload))
        except ProtocolError as error:
            log.warning("%s: bad ack: %s", self.id, error)
            return
        if ack.epoch and ack.epoch != self._epoch:
            return  # another run's (retained) ack for this device id
        if ack.seq <= self.acked:
            return
        self.acked = ack.seq
        self._last_ack_at = time.monotonic()
        while self._backlog and self._backlog[0][0] <= ack.seq:
            self._backlog.popleft()
        self._dropped = [d for d in self._dropped if d.last > ack.seq]

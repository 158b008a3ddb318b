"""The receive side of MQTT 3.1.1, as an asyncio protocol: connect, subscribe, take publishes.

This is the agent's hot path, so it works on batches: every ``data_received`` parses all the
complete packets it holds and hands their publishes to ``on_messages`` in one list, then sends
the PUBACKs together. Flow control is the transport's own ``pause_reading``: while the consumer
has no room, nothing more is read from the socket and TCP pushes back on the broker. Why this is
hand-written rather than taken from a client library: docs/design/001-receive-path.md.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 0x10, 0x20, 0x30, 0x40, 0x82, 0x90
PINGREQ, PINGRESP, DISCONNECT = b"\xc0\x00", 0xD0, b"\xe0\x00"
_PUBACK_HEAD = b"\x40\x02\x00\x00"  # the packet id goes in the last two bytes

CONNACK_REASONS = {
    1: "the broker does not speak MQTT 3.1.1",
    2: "the broker refused the client id",
    3: "the broker is unavailable",
    4: "bad user name or password",
    5: "not authorised",
}

MAX_CONTROL = 64 << 10
"""A broker's control packets (CONNACK, SUBACK, PUBACK, PINGRESP) are a few bytes: one declared
larger is refused at once rather than buffered (a hostile broker could declare 256 MB)."""

Message = tuple[str, bytes, int]
"""(topic, payload, retain flag): the broker sets the flag on a retained message it delivers
because of a subscription, which MQTT sources use to take each retained message once."""


class HeldAcks(Protocol):
    """Who decides when a QoS 1 publish is acknowledged, when the protocol does not ack at once."""

    def taken(self, packet_ids: list[int]) -> None:
        """Whole QoS 1 publishes passed on, their acknowledgement now owed (one call a read)."""

    def redelivered(self, packet_id: int) -> bool:
        """A publish marked DUP came in: True to pass it on, False if it is one already taken
        whose acknowledgement is still owed."""


class MqttProtocolError(Exception):
    """The broker refused us, or sent something that is not MQTT."""


@dataclass(frozen=True)
class Session:
    client_id: str
    subscriptions: tuple[tuple[str, int], ...]
    clean_session: bool = False
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    max_payload: int = 65536


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + _varint(len(body)) + body


def connect_packet(session: Session) -> bytes:
    flags = 0x00 if not session.clean_session else 0x02
    payload = _string(session.client_id)
    if session.username is not None:
        flags |= 0x80
        payload += _string(session.username)
        if session.password is not None:
            flags |= 0x40
            payload += _string(session.password)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", session.keepalive) + payload
    return _packet(CONNECT, body)


def puback_packets(packet_ids: list[int]) -> bytes:
    """One PUBACK per id, in order, as one write: built by whole-buffer copies, not per id
    (a checkpoint releases thousands)."""
    ids = array("H", packet_ids)
    if sys.byteorder == "little":
        ids.byteswap()  # packet ids go big-endian on the wire
    raw = ids.tobytes()
    out = bytearray(_PUBACK_HEAD * len(ids))
    out[2::4] = raw[0::2]
    out[3::4] = raw[1::2]
    return bytes(out)


def subscribe_packet(packet_id: int, subscriptions: tuple[tuple[str, int], ...]) -> bytes:
    body = struct.pack("!H", packet_id)
    for topic_filter, qos in subscriptions:
        body += _string(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE, body)


class SubscriberProtocol(asyncio.Protocol):
    """One connection's worth of MQTT. ``ready`` resolves once subscribed; ``closed`` when the
    connection ends (with the reason as its exception, if any)."""

    def __init__(
        self,
        session: Session,
        on_messages: Callable[[list[Message]], None],
        on_oversized: Callable[[str, int], None],
        held: HeldAcks | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._held = held
        """With ``held``, QoS 1 publishes are acknowledged only through ``send_acks``."""
        self.session = session
        self.ready: asyncio.Future[bool] = loop.create_future()  # result: session present
        self.closed: asyncio.Future[None] = loop.create_future()
        self._on_messages = on_messages
        self._on_oversized = on_oversized
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._skip = 0
        self._partial_since: float | None = None
        """Since when an incomplete packet has been waiting for its rest (a link that dribbles
        a byte a second keeps ``_last_in`` fresh forever, but not this)."""
        self._last_in = self._last_out = time.monotonic()
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._session_present = False
        self._paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._write(connect_packet(self.session))
        self._schedule_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._keepalive_timer:
            self._keepalive_timer.cancel()
        self._settle(exc or ConnectionResetError("the broker closed the connection"), clean=exc is None)

    def data_received(self, data: bytes) -> None:
        self._last_in = time.monotonic()
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        buf = self._buffer
        buf += data
        messages: list[Message] = []
        acks: list[bytes] = []
        taken: list[int] = []
        failure = None
        try:
            del buf[: self._parse(buf, messages, acks, taken)]
        except MqttProtocolError as exc:
            failure = exc
        if not buf and not self._skip:
            self._partial_since = None
        elif self._partial_since is None:
            self._partial_since = self._last_in
        if taken and self._held is not None:
            self._held.taken(taken)
        if messages:  # whole, valid packets before a broken one still count
            self._on_messages(messages)
        if acks:
            self._write(b"".join(acks))
        if failure:
            self._fail(failure)

    def pause_reading(self) -> None:
        if self._transport and not self._transport.is_closing() and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport and not self._transport.is_closing() and self._paused:
            self._paused = False
            self._last_in = time.monotonic()  # silence while paused was ours, not the broker's
            if self._partial_since is not None:
                self._partial_since = self._last_in
            self._transport.resume_reading()

    def send_acks(self, packet_ids: list[int]) -> bool:
        """Acknowledge these QoS 1 publishes (held ones); False if the connection is gone."""
        if not self._transport or self._transport.is_closing():
            return False
        if packet_ids:
            self._write(puback_packets(packet_ids))
        return True

    def disconnect(self) -> None:
        """Close cleanly: the broker keeps the session and does not fire a will."""
        if self._transport and not self._transport.is_closing():
            self._transport.write(DISCONNECT)
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once (a connect that timed out, a dead link)."""
        if self._transport and not self._transport.is_closing():
            self._transport.abort()

    # -- parsing -------------------------------------------------------------------------------

    def _parse(
        self, buf: bytearray, messages: list[Message], acks: list[bytes], taken: list[int]
    ) -> int:
        pos, end = 0, len(buf)
        max_payload = self.session.max_payload
        held_acks = self._held
        while end - pos >= 2:
            header = buf[pos]
            length = buf[pos + 1]
            index = pos + 2
            if length & 0x80:  # a packet of 128 bytes or more: the length takes more bytes
                length &= 0x7F
                shift = 7
                while True:
                    if index >= end:
                        return pos
                    byte = buf[index]
                    length |= (byte & 0x7F) << shift
                    index += 1
                    if not byte & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MqttProtocolError("malformed remaining length")
            stop = index + length
            kind = header & 0xF0
            if kind == PUBLISH:
                if index + 2 > end:
                    return pos
                topic_end = index + 2 + (buf[index] << 8 | buf[index + 1])
                qos = (header >> 1) & 0x03
                payload_start = topic_end + (2 if qos else 0)
                if payload_start > end:
                    return pos
                held = held_acks if qos else None
                if qos and held is None:
                    acks.append(b"\x40\x02" + bytes(buf[topic_end:payload_start]))
                if stop - payload_start > max_payload:
                    topic = buf[index + 2 : topic_end].decode("utf-8", "replace")
                    if held is None or self._take(held, header, buf, topic_end, taken):
                        self._on_oversized(topic, stop - payload_start)
                    if stop > end:
                        self._skip = stop - end
                        return end
                    pos = stop
                    continue
                if stop > end:
                    if qos and held is None:
                        acks.pop()  # acked when the whole packet is here
                    return pos
                if held is not None:  # _take, inline: this is once a reading
                    packet_id = buf[topic_end] << 8 | buf[topic_end + 1]
                    if header & 0x08 and not held.redelivered(packet_id):
                        pos = stop  # a redelivery of a publish already taken or acknowledged
                        continue
                    taken.append(packet_id)
                try:
                    topic = buf[index + 2 : topic_end].decode()
                except UnicodeDecodeError:
                    raise MqttProtocolError("a topic is not UTF-8") from None
                messages.append((topic, bytes(buf[payload_start:stop]), header & 0x01))
            else:
                if length > MAX_CONTROL:
                    raise MqttProtocolError(f"a control packet (0x{header:02x}) of {length} bytes")
                if stop > end:
                    return pos
                self._control(header, bytes(buf[index:stop]))
            pos = stop
        return pos

    @staticmethod
    def _take(held: HeldAcks, header: int, buf: bytearray, at: int, taken: list[int]) -> bool:
        """Whether to pass a held QoS 1 publish on; if so its id joins ``taken``."""
        packet_id = buf[at] << 8 | buf[at + 1]
        if header & 0x08 and not held.redelivered(packet_id):
            return False
        taken.append(packet_id)
        return True

    def _control(self, header: int, body: bytes) -> None:
        kind = header & 0xF0
        if header == CONNACK:
            if len(body) != 2:
                raise MqttProtocolError("malformed CONNACK")
            if body[1] != 0:
                reason = CONNACK_REASONS.get(body[1], f"refused with code {body[1]}")
                raise MqttProtocolError(f"connection refused: {reason}")
            self._session_present = bool(body[0] & 0x01)
            self._write(subscribe_packet(1, self.session.subscriptions))
        elif header == SUBACK:
            refused = [
                topic_filter
                for (topic_filter, _), granted in zip(self.session.subscriptions, body[2:], strict=False)
                if granted == 0x80
            ]
            if refused:
                raise MqttProtocolError(f"the broker refused the subscription to {', '.join(refused)}")
            if not self.ready.done():
                self.ready.set_result(self._session_present)
        elif kind in (PINGRESP, PUBACK):
            pass
        else:
            raise MqttProtocolError(f"unexpected packet type 0x{header:02x}")

    # -- keepalive -----------------------------------------------------------------------------

    def _schedule_keepalive(self) -> None:
        interval = max(self.session.keepalive / 2, 0.5)
        self._keepalive_timer = asyncio.get_running_loop().call_later(interval, self._keepalive)

    def _keepalive(self) -> None:
        now = time.monotonic()
        keepalive = self.session.keepalive
        if not self._paused and now - self._last_in > keepalive * 1.5:
            self._fail(TimeoutError(f"no data from the broker for {now - self._last_in:.0f} s"))
            return
        started = self._partial_since
        if not self._paused and started is not None and now - started > keepalive * 1.5:
            self._fail(TimeoutError(f"a packet from the broker took over {now - started:.0f} s to arrive"))
            return
        if now - self._last_out >= keepalive / 2:
            self._write(PINGREQ)
        self._schedule_keepalive()

    def _write(self, data: bytes) -> None:
        if self._transport and not self._transport.is_closing():
            self._transport.write(data)
            self._last_out = time.monotonic()

    def _fail(self, exc: Exception) -> None:
        self._settle(exc, clean=False)
        if self._transport:
            self._transport.abort()

    def _settle(self, exc: Exception, clean: bool) -> None:
        """Resolve ``ready`` and ``closed``; the reason goes to whichever someone awaits now."""
        if not self.ready.done():
            self.ready.set_exception(exc)
            if not self.closed.done():
                self.closed.set_result(None)
        elif not self.closed.done():
            if clean:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(exc)

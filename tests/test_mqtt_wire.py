"""The receive path's MQTT parser, fed bytes the way a socket delivers them."""

from __future__ import annotations

import asyncio
import struct

import pytest

from agent.sources.mqtt_wire import (
    MqttProtocolError,
    Session,
    SubscriberProtocol,
    _varint,
    connect_packet,
    puback_packets,
)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data) -> None:  # type: ignore[override]
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 1) -> bytes:
    raw = topic.encode()
    body = struct.pack("!H", len(raw)) + raw + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


async def connected(max_payload: int = 1000):
    got: list[tuple[str, bytes]] = []
    oversized: list[tuple[str, int]] = []
    session = Session("c1", (("sensors/#", 1),), keepalive=30, max_payload=max_payload)
    protocol = SubscriberProtocol(session, got.extend, lambda t, n: oversized.append((t, n)))
    transport = FakeTransport()
    protocol.connection_made(transport)
    assert bytes(transport.written) == connect_packet(session)
    protocol.data_received(b"\x20\x02\x01\x00")  # CONNACK, session present
    protocol.data_received(b"\x90\x03\x00\x01\x01")  # SUBACK granted QoS 1
    assert await protocol.ready is True
    transport.written.clear()
    return protocol, transport, got, oversized


async def test_publishes_split_anywhere_arrive_whole_and_qos1_is_acked():
    protocol, transport, got, _ = await connected()
    stream = b"".join(
        publish(f"sensors/t{i}", b'{"value": %d}' % i, qos=i % 2, packet_id=i + 1) for i in range(50)
    )
    for i in range(0, len(stream), 7):  # seven bytes at a time
        protocol.data_received(stream[i : i + 7])
    assert got == [(f"sensors/t{i}", b'{"value": %d}' % i, 0) for i in range(50)]
    acks = bytes(transport.written)
    expected = b"".join(b"\x40\x02" + struct.pack("!H", i + 1) for i in range(50) if i % 2)
    assert acks == expected


async def test_one_read_with_many_packets_is_one_batch():
    batches: list[list] = []
    session = Session("c1", (("sensors/#", 0),))
    protocol = SubscriberProtocol(session, batches.append, lambda t, n: None)
    protocol.connection_made(FakeTransport())
    protocol.data_received(b"\x20\x02\x00\x00\x90\x03\x00\x01\x00")
    protocol.data_received(b"".join(publish("sensors/a", b"1") for _ in range(100)))
    assert len(batches) == 1 and len(batches[0]) == 100


async def test_an_oversized_publish_is_skipped_as_it_streams_and_acked():
    protocol, transport, got, oversized = await connected(max_payload=1000)
    big = publish("sensors/big", b"x" * 1_000_000, qos=1, packet_id=7)
    after = publish("sensors/ok", b"5", qos=1, packet_id=8)
    stream = big + after
    for i in range(0, len(stream), 65536):
        protocol.data_received(stream[i : i + 65536])
    assert oversized == [("sensors/big", 1_000_000)]
    assert got == [("sensors/ok", b"5", 0)]
    assert bytes(transport.written) == b"\x40\x02\x00\x07\x40\x02\x00\x08"
    assert len(protocol._buffer) == 0  # the megabyte was never held


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"\x20\x02\x00\x05", "not authorised"),
        (b"\x20\x02\x00\x04", "bad user name or password"),
    ],
)
async def test_a_refused_connection_says_why(packet, message):
    protocol = SubscriberProtocol(Session("c1", (("a", 0),)), lambda m: None, lambda t, n: None)
    protocol.connection_made(FakeTransport())
    protocol.data_received(packet)
    with pytest.raises(MqttProtocolError, match=message):
        await protocol.ready


async def test_a_refused_subscription_and_garbage_fail_the_connection():
    protocol = SubscriberProtocol(Session("c1", (("a/#", 1),)), lambda m: None, lambda t, n: None)
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"\x20\x02\x00\x00\x90\x03\x00\x01\x80")
    with pytest.raises(MqttProtocolError, match="refused the subscription to a/#"):
        await protocol.ready
    assert transport.closed

    protocol, transport, _, _ = await connected()
    protocol.data_received(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(MqttProtocolError, match="malformed remaining length"):
        await protocol.closed
    assert transport.closed


@pytest.mark.parametrize(
    "packet_ids", [[1], [1, 2, 3], [0x0100, 0x00FF, 0xFFFF, 0x1234], list(range(1, 3000))]
)
def test_pubacks_are_one_write_of_four_bytes_per_id_in_order(packet_ids: list[int]) -> None:
    expected = b"".join(b"\x40\x02" + struct.pack("!H", pid) for pid in packet_ids)
    assert puback_packets(packet_ids) == expected

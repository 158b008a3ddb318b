"""Hostile input on the receive path: whatever bytes arrive, the parser and the reading decoder
answer with a named reason or a clean protocol error, never anything else."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.api import Record
from agent.sources.mqtt_wire import MqttProtocolError, Session, SubscriberProtocol
from agent.sources.readings import Rejected, decode_reading
from tests.test_mqtt_wire import FakeTransport, publish

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["value", "ts", "unit", "x"]), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_as_a_payload_are_a_reading_or_a_named_rejection(payload):
    try:
        record = decode_reading("sensors/t1", "t1", payload, now=1.0)
    except Rejected as rejected:
        assert rejected.reason
        return
    assert isinstance(record, Record) and isinstance(record.data["value"], int | float)


@settings(max_examples=2000, deadline=None)
@given(JSONISH)
def test_any_json_shape_is_a_reading_or_a_named_rejection(body):
    import json

    try:
        payload = json.dumps(body).encode()
    except ValueError:
        return
    try:
        record = decode_reading("sensors/t1", "t1", payload, now=1.0)
    except Rejected:
        return
    assert record.ts >= 0 and record.data["sensor"] == "t1"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=64))
def test_any_bytes_from_the_broker_end_in_messages_or_a_protocol_error(garbage, chunk):
    async def feed() -> None:
        got: list[tuple[str, bytes, int]] = []
        session = Session("c", (("#", 1),), max_payload=200)
        protocol = SubscriberProtocol(session, got.extend, lambda t, n: None)
        transport = FakeTransport()
        protocol.connection_made(transport)
        stream = b"\x20\x02\x00\x00\x90\x03\x00\x01\x01" + publish("a/b", b"1", qos=1) + garbage
        for i in range(0, len(stream), chunk):
            if transport.closed:
                break
            protocol.data_received(stream[i : i + chunk])
        assert got[:1] == [("a/b", b"1", 0)]
        if protocol.closed.done() and protocol.closed.exception() is not None:
            assert isinstance(protocol.closed.exception(), MqttProtocolError)
            assert transport.closed

    asyncio.run(feed())

"""Hostile payloads through every format of the MQTT source: random objects, deep nesting, huge
numbers, non-UTF-8 bytes, megabyte strings. Nothing escapes the source, and every message is
either taken (readings accepted) or counted by reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.bus import Bus, RecordQueue
from agent.config import MqttSourceConfig
from agent.counters import CounterSet
from agent.runtime.source_runner import SourceContextImpl
from agent.sources.mqtt import MqttSource
from agent.sources.payload import FORMATS
from tests.sparkplug_helpers import DOUBLE, INT32, STRING, payload

NOTICED = ("accepted", "excluded", "retained_repeat", "retained_skipped", "fields_ignored", "no_fields")
KEYS = st.sampled_from(["value", "ts", "temperature", "params", "src", "method", "values", "Time",
                        "AM2301", "last_seen", "id", "x"]) | st.text(max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**400)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
           | st.sampled_from(["ON", "off", "nan", "inf", "37.00", "2024-05-01T10:00:00", "NotifyStatus"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                       | st.dictionaries(KEYS, inner, max_size=6), max_leaves=30)
TOPICS = st.sampled_from([
    "sensors/t1", "zigbee2mqtt/dev", "zigbee2mqtt/bridge/state", "tele/x/SENSOR", "tele/x/LWT",
    "node/sensor/t/state", "node/status", "shellies/s1/relay/0", "shellyplus-1/events/rpc",
    "homeassistant/sensor/t/state", "spBv1.0/g/NDATA/e", "spBv1.0/g/DBIRTH/e/d", "a/b/c/d/e/f",
]) | st.text(alphabet="abc/+#", min_size=1, max_size=12).filter(lambda t: "+" not in t and "#" not in t)


def _as_bytes(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except (ValueError, OverflowError):
        return b"{}"


def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


PAYLOADS = (
    JSONISH.map(_as_bytes)
    | st.binary(max_size=200)
    | st.sampled_from([b"NaN", b"Infinity", b'{"v": 1e999}', b'{"ts": 1e400, "v": 1}', b"\xff\xfe\xfd",
                       b"nan", b"", deep(200), deep(5000), b"[" * 10000, b'"' + b"x" * (1 << 20) + b'"',
                       b'{"value": "' + b"9" * (1 << 20) + b'"}'])
    | st.builds(lambda ts, value: payload(ts, {"name": "m", "alias": 1, "datatype": DOUBLE, "value": value},
                                          {"alias": 2, "datatype": INT32, "value": 5},
                                          {"name": "s", "datatype": STRING, "value": "x"}),
                st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
                st.floats(allow_nan=True, allow_infinity=True))
)

_LOOP = asyncio.new_event_loop()


def _source(fmt: str, retained: str) -> tuple[MqttSource, CounterSet]:
    extra: dict[str, Any] = {}
    if fmt == "json":
        extra["payload"] = {"fields": ["*", "params.*.*", "values.*"], "ts": "ts",
                            "where": "x != 'skip'", "sensor": "{topic[0]}/{item.src}/{field}"}
    config = MqttSourceConfig.model_validate(
        {"type": "mqtt", "name": "s", "format": fmt, "retained": retained, "topics": ["#"],
         "exclude": ["a/b/#"], **extra})
    counters = CounterSet()
    bus = Bus()
    bus.subscribe(["#"], RecordQueue(10_000_000))
    context = SourceContextImpl(config, "d", bus, counters)
    return MqttSource(config, context), counters


@pytest.fixture(scope="module")
def sources() -> Iterator[dict[tuple[str, str], tuple[MqttSource, CounterSet]]]:
    built: dict[tuple[str, str], tuple[MqttSource, CounterSet]] = {}

    async def build() -> None:
        for fmt in FORMATS:
            for retained in ("once", "skip"):
                built[fmt, retained] = _source(fmt, retained)

    _LOOP.run_until_complete(build())
    yield built


def _noticed(counters: CounterSet) -> int:
    totals = {name: n for (scope, name), n in counters.totals.items() if scope == "source:s"}
    return sum(n for name, n in totals.items() if name in NOTICED or name.startswith("dropped."))


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(topic=TOPICS, body=PAYLOADS, retain=st.integers(0, 1), mode=st.sampled_from(["once", "skip"]))
def test_every_message_is_taken_or_counted_by_reason(
    sources: dict[tuple[str, str], tuple[MqttSource, CounterSet]], fmt: str, topic: str, body: bytes,
    retain: int, mode: str,
) -> None:
    source, counters = sources[fmt, mode]
    before = _noticed(counters)
    received = counters.totals.get(("source:s", "received"), 0)

    async def deliver() -> None:
        source._on_messages([(topic, body, retain)])

    _LOOP.run_until_complete(deliver())  # no exception may escape
    assert counters.totals[("source:s", "received")] == received + 1
    assert _noticed(counters) > before, (fmt, topic, body[:80])

"""Every source puts a reading on the bus as ``<prefix><sensor id>``: a line source under its
``topic_prefix``, the MQTT source under the fixed part of the subscription the message came by,
whether the payload is the agent's own shape or a device's mapped by a ``format``. Module
``inputs`` then route by sensor the same way for every source, and ``replay`` (which rebuilds
topics as ``<prefix><sensor>``) routes as the live path does."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from agent.bus import Bus, RecordQueue
from agent.config import MqttSourceConfig
from agent.counters import CounterSet
from agent.runtime.source_runner import SourceContextImpl
from agent.sources.exec import ExecConfig
from agent.sources.lines import LineDecoder
from agent.sources.mqtt import MqttSource
from agent.wiring import check_wiring

CASES: list[tuple[str, list[str], str, str, dict[str, str]]] = [
    # format, subscriptions, message topic, payload, {sensor id: the reading's topic}
    ("reading", ["sensors/#"], "sensors/hall/t", '{"value": 1.5}', {"hall/t": "sensors/hall/t"}),
    ("zigbee2mqtt", ["zigbee2mqtt/#"], "zigbee2mqtt/hall", '{"temperature": 21.5, "humidity": "40"}',
     {"hall/temperature": "zigbee2mqtt/hall/temperature", "hall/humidity": "zigbee2mqtt/hall/humidity"}),
    ("tasmota", ["tele/+/SENSOR"], "tele/plug/SENSOR",
     '{"AM2301": {"Temperature": 22.6}, "ENERGY": {"Power": 45}, "TempUnit": "C"}',
     {"plug/AM2301/Temperature": "tele/plug/AM2301/Temperature",
      "plug/ENERGY/Power": "tele/plug/ENERGY/Power"}),
    ("esphome", ["+/sensor/+/state"], "livingroom/sensor/temperature/state", "21.50",
     {"livingroom/temperature": "livingroom/temperature"}),
    ("shelly", ["shellies/#", "+/events/rpc"], "shellies/shelly1-B929CC/relay/0", "on",
     {"shelly1-B929CC/relay/0": "shellies/shelly1-B929CC/relay/0"}),
    ("shelly", ["shellies/#", "+/events/rpc"], "plusht/events/rpc",
     json.dumps({"src": "plusht", "method": "NotifyStatus", "params": {"temperature:0": {"tC": 19.8}}}),
     {"plusht/temperature:0/tC": "plusht/temperature:0/tC"}),
    ("homeassistant", ["homeassistant/+/+/state"], "homeassistant/sensor/outside/state", '"21.5"',
     {"sensor.outside": "homeassistant/sensor.outside"}),
    ("json", ["v1/gateway/+/telemetry"], "v1/gateway/boiler/telemetry", '{"values": {"temperature": 61.5}}',
     {"boiler/temperature": "v1/gateway/boiler/temperature"}),
]


def _mqtt_topics(fmt: str, topics: list[str], topic: str, payload: str) -> dict[str, str]:
    extra: dict[str, Any] = {}
    if fmt == "json":
        extra["payload"] = {"fields": ["values.*"], "sensor": "{topic[2]}/{name}"}
    config = MqttSourceConfig.model_validate(
        {"type": "mqtt", "name": "s", "format": fmt, "topics": topics, **extra})
    bus = Bus()
    queue = RecordQueue(1000)
    bus.subscribe(["#"], queue)

    async def take() -> None:
        source = MqttSource(config, SourceContextImpl(config, "d", bus, CounterSet()))
        source._on_messages([(topic, payload.encode(), False)])

    asyncio.run(take())
    return {record.data["sensor"]: record.topic for record in queue.get_nowait() or []}


@pytest.mark.parametrize(("fmt", "topics", "topic", "payload", "expected"), CASES,
                         ids=[f"{case[0]}:{case[2]}" for case in CASES])
def test_an_mqtt_reading_goes_on_the_fixed_part_of_its_subscription_and_its_sensor_id(
    fmt: str, topics: list[str], topic: str, payload: str, expected: dict[str, str]
) -> None:
    assert _mqtt_topics(fmt, topics, topic, payload) == expected


def test_a_line_source_mapping_json_puts_readings_on_its_prefix_and_sensor_id() -> None:
    config = ExecConfig.model_validate({
        "type": "exec", "name": "gw", "command": ["true"], "topic_prefix": "tele/",
        "payload": {"fields": ["*.*"], "sensor": "plug/{field}"},
    })
    context = SourceContextImpl(config, "d", Bus(), CounterSet())
    records = LineDecoder(config, context).decode([b'{"ENERGY": {"Power": 45}}'], 0.0)
    assert [(r.topic, r.data["sensor"]) for r in records] == [("tele/plug/ENERGY/Power", "plug/ENERGY/Power")]


@pytest.mark.parametrize(("inputs", "reachable"), [
    (["tele/#"], True),
    (["tele/+/AM2301/Temperature"], True),  # one quantity of every device
    (["stat/#"], False),  # nothing of this source goes there
])
def test_check_knows_a_mapped_source_s_readings_are_under_the_fixed_part(
    inputs: list[str], reachable: bool
) -> None:
    source = MqttSourceConfig.model_validate(
        {"type": "mqtt", "name": "s", "format": "tasmota", "topics": ["tele/+/SENSOR"]})
    plan = SimpleNamespace(spec=SimpleNamespace(name="win", inputs=inputs, sync=True),
                           cls=SimpleNamespace(outputs=()))
    assert (check_wiring("agent.toml", [source], [plan]) == []) is reachable

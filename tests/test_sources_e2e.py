"""Device payloads through the real path: Mosquitto, the agent as a process, ``window``
summaries in the outbox. Each preset gets messages in the shapes its firmware's documentation
shows (and issue reports, such as Zigbee2MQTT's numbers as strings), with the exact sensor ids
and values it must give; status and last-will topics must be counted apart from drops."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.health.metrics import render
from agent.health.status import read_status
from agent.outbox.store import Outbox
from tests.conftest import AgentProcess, Broker
from tests.mapping_helpers import (
    Message,
    publish,
    run_once,
    source_config,
    summaries,
    values,
    wait_received,
)
from tests.sparkplug_helpers import BOOLEAN, DOUBLE, INT32, INT64, payload

pytestmark = pytest.mark.integration

NOW = time.time()
MS = int(NOW * 1000) - 5000
ISO_UTC = datetime.fromtimestamp(NOW - 5, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
LOCAL = datetime.fromtimestamp(NOW - 5).strftime("%Y-%m-%dT%H:%M:%S")  # Tasmota: local, no offset

CASES: dict[str, tuple[str, list[str], list[Message], dict[str, float], dict[str, Any]]] = {
    "zigbee2mqtt": (
        'format = "zigbee2mqtt"', ["zigbee2mqtt/#"],
        [
            ("zigbee2mqtt/bridge/state", '{"state":"online"}', True),
            ("zigbee2mqtt/living_room", json.dumps({
                "battery": "37.00", "humidity": 54.21, "pressure": 1008.5, "temperature": 21.5,
                "voltage": 2995, "linkquality": 120, "last_seen": ISO_UTC}), False),
            ("zigbee2mqtt/hall/motion", json.dumps({
                "occupancy": True, "illuminance_lux": 13, "update": {"state": "idle"},
                "last_seen": int((NOW - 5) * 1000)}), False),
            ("zigbee2mqtt/hall/motion/availability", '{"state":"online"}', True),
        ],
        {"living_room/battery": 37.0, "living_room/humidity": 54.21, "living_room/pressure": 1008.5,
         "living_room/temperature": 21.5, "living_room/voltage": 2995, "living_room/linkquality": 120,
         "hall/motion/occupancy": 1, "hall/motion/illuminance_lux": 13},
        {"excluded": 2, "fields_ignored": 1},
    ),
    "tasmota": (
        'format = "tasmota"\ntopics = ["tele/#"]', ["tele/#"],
        [
            ("tele/tasmota_5FE3B9/LWT", "Online", True),
            ("tele/tasmota_5FE3B9/STATE", json.dumps({"Time": LOCAL, "Uptime": "0T00:10:00"}), False),
            ("tele/tasmota_5FE3B9/SENSOR", json.dumps({
                "Time": LOCAL, "AM2301": {"Temperature": 22.6, "Humidity": 32.4}, "TempUnit": "C"}), False),
            ("tele/plug/SENSOR", json.dumps({"Time": LOCAL, "ENERGY": {
                "TotalStartTime": "2019-01-01T00:00:00", "Total": 12.345, "Power": 45, "Voltage": 230}}),
             False),
        ],
        {"tasmota_5FE3B9/AM2301/Temperature": 22.6, "tasmota_5FE3B9/AM2301/Humidity": 32.4,
         "plug/ENERGY/Total": 12.345, "plug/ENERGY/Power": 45, "plug/ENERGY/Voltage": 230},
        {"excluded": 2, "fields_ignored": 1},
    ),
    "esphome": (
        'format = "esphome"\ntopics = ["livingroom/#"]', ["livingroom/#"],
        [
            ("livingroom/status", "online", True),
            ("livingroom/sensor/temperature/state", "21.50", True),
            ("livingroom/sensor/humidity/state", "nan", False),
            ("livingroom/binary_sensor/window/state", "ON", False),
            ("livingroom/switch/relay/command", "OFF", False),
        ],
        {"livingroom/temperature": 21.5, "livingroom/window": 1},
        {"excluded": 2, "dropped": {"value_not_finite": 1}},
    ),
    "shelly": (
        'format = "shelly"', ["shellies/#", "+/+/+"],  # Gen2 readings: <src>/<component>/<field>
        [
            ("shellies/shelly1-B929CC/online", "true", True),
            ("shellies/shelly1-B929CC/relay/0", "on", False),
            ("shellies/shellyht-6F2C39/sensor/temperature", "22.25", False),
            ("shellies/shellyht-6F2C39/sensor/humidity", "51", False),
            ("shellyplusht-c049ef8e2f28/events/rpc", json.dumps({
                "src": "shellyplusht-c049ef8e2f28", "dst": "shellyplusht-c049ef8e2f28/events",
                "method": "NotifyStatus",
                "params": {"ts": NOW - 5, "temperature:0": {"id": 0, "tC": 19.8, "tF": 67.6}}}), False),
            ("shellyplusht-c049ef8e2f28/events/rpc", json.dumps({
                "src": "shellyplusht-c049ef8e2f28", "method": "NotifyEvent",
                "params": {"ts": NOW - 5, "events": [{"component": "sys", "event": "ota_progress"}]},
            }), False),
        ],
        {"shelly1-B929CC/relay/0": 1, "shellyht-6F2C39/sensor/temperature": 22.25,
         "shellyht-6F2C39/sensor/humidity": 51, "shellyplusht-c049ef8e2f28/temperature:0/tC": 19.8,
         "shellyplusht-c049ef8e2f28/temperature:0/tF": 67.6},
        {"excluded": 2},
    ),
    "homeassistant": (
        'format = "homeassistant"\ntopics = ["homeassistant/#"]', ["homeassistant/#"],
        [
            ("homeassistant/sensor/outside_temperature/state", '"21.5"', True),
            ("homeassistant/sensor/outside_temperature/attributes", '{"unit_of_measurement":"°C"}', True),
            ("homeassistant/sensor/outside_temperature/last_updated", '"2024-05-01T10:00:00+00:00"', True),
            ("homeassistant/binary_sensor/front_door/state", '"off"', False),
            ("homeassistant/sensor/weather/state", '"sunny"', False),
        ],
        {"sensor.outside_temperature": 21.5, "binary_sensor.front_door": 0},
        {"excluded": 2, "fields_ignored": 1},
    ),
    "sparkplug_b": (
        'format = "sparkplug_b"', ["spBv1.0/#"],
        [
            ("spBv1.0/plant1/NBIRTH/edge7", payload(
                MS, {"name": "bdSeq", "datatype": INT64, "value": 0},
                {"name": "Node Control/Rebirth", "datatype": BOOLEAN, "value": False},
                {"name": "Supply/Voltage", "alias": 1, "datatype": DOUBLE, "value": 229.5}), False),
            ("spBv1.0/plant1/DBIRTH/edge7/pump1", payload(
                MS, {"name": "Speed", "alias": 2, "datatype": INT32, "value": -120},
                {"name": "Running", "alias": 3, "datatype": BOOLEAN, "value": True}), False),
            ("spBv1.0/plant1/DDATA/edge7/pump1", payload(
                MS + 1500, {"alias": 2, "datatype": INT32, "value": -118}), False),
            ("spBv1.0/plant1/NDEATH/edge7", payload(None, {"name": "bdSeq", "datatype": INT64, "value": 0}),
             False),
        ],
        {},
        {"excluded": 1, "fields_ignored": 2},
    ),
    "json (ThingsBoard-style)": (
        """
        format = "json"
        topics = ["v1/gateway/+/telemetry"]
        [sources.payload]
        fields = ["values.*"]
        sensor = "{topic[2]}/{name}"
        ts = "ts"
        ts_format = "unix_ms"
        """, ["v1/#"],
        [("v1/gateway/boiler/telemetry",
          json.dumps({"ts": int((NOW - 5) * 1000), "values": {"temperature": 61.5, "pressure": "1.8",
                                                              "mode": "eco"}}), False)],
        {"boiler/temperature": 61.5, "boiler/pressure": 1.8},
        {"fields_ignored": 1},
    ),
}

@pytest.mark.parametrize("case", list(CASES))
def test_a_preset_gives_exact_sensor_ids_and_values(case: str, tmp_path, broker: Broker, agents) -> None:
    source, inputs, messages, expected, counted = CASES[case]
    config = source_config(tmp_path, broker, source, inputs)
    status = run_once(config, broker, agents, messages)
    counters: dict[str, Any] = status["sources"]["dev"]
    if case == "sparkplug_b":  # the pump's speed has two readings: by birth, then by alias
        assert summaries(tmp_path / "data") == {
            "plant1/edge7/Supply/Voltage": {"count": 1, "min": 229.5, "max": 229.5},
            "plant1/edge7/pump1/Speed": {"count": 2, "min": -120, "max": -118},
            "plant1/edge7/pump1/Running": {"count": 1, "min": 1, "max": 1},
        }
        assert counters["accepted"] == 4
    else:
        assert values(tmp_path / "data") == pytest.approx(expected)
        assert counters["accepted"] == len(expected)
    metrics = render(status)
    for name, count in counted.items():
        assert counters.get(name, 0) == count, (name, counters)
        if name != "dropped":
            assert f'edge_agent_source_not_readings_total{{source="dev",kind="{name}"}} {count}' in metrics
    if "dropped" not in counted:
        assert status["dropped"] == {}


def test_a_module_takes_one_quantity_of_a_mapped_message_by_topic(tmp_path, broker: Broker, agents) -> None:
    """Mapped readings go on ``<prefix><sensor id>`` as every reading does, so ``inputs`` can
    pick one field out of a device's message."""
    config = source_config(tmp_path, broker, 'format = "zigbee2mqtt"', ["zigbee2mqtt/+/temperature"])
    run_once(config, broker, agents, [
        ("zigbee2mqtt/hall", json.dumps({"temperature": 21.5, "humidity": 40.0}), False),
        ("zigbee2mqtt/attic", json.dumps({"temperature": 30.5, "battery": 80}), False),
    ])
    assert values(tmp_path / "data") == {"hall/temperature": 21.5, "attic/temperature": 30.5}


def test_a_retained_reading_is_taken_once_across_a_restart(tmp_path, broker: Broker, agents) -> None:
    """One retained before the agent starts, one published retained while it runs: after a
    restart the broker delivers both again, and the outbox still holds one of each."""
    config = source_config(tmp_path, broker, 'topics = ["sensors/#"]', ["sensors/#"])
    before = ("sensors/t1", json.dumps({"value": 1.5, "ts": NOW - 30}), True)
    during = ("sensors/t2", json.dumps({"value": 2.5, "ts": NOW - 20}), True)

    publish(broker, [before])
    first = run_once(config, broker, agents, [during], expect_received=1)  # `before` came first
    assert first["sources"]["dev"]["accepted"] == 2
    second = run_once(config, broker, agents, [], expect_received=2)  # both again, retained
    assert second["sources"]["dev"]["retained_repeat"] == 2
    assert second["sources"]["dev"]["accepted"] == 2
    assert {sensor: s["count"] for sensor, s in summaries(tmp_path / "data").items()} == {"t1": 1, "t2": 1}

def test_a_retained_reading_taken_just_before_a_kill_counts_once(tmp_path, broker: Broker, agents) -> None:
    """The agent takes a retained reading and is killed before any checkpoint covers it: the
    broker delivers it again (once as the unacknowledged DUP, once as the retained message of the
    new subscription), and the window counts it exactly once, neither lost nor doubled."""
    data_dir = tmp_path / "data"
    config = source_config(tmp_path, broker, 'topics = ["sensors/#"]', ["sensors/#"])
    normal = config.read_text()
    config.write_text(normal + '\n[buffer]\ncommit_interval = "1h"\ncommit_records = 1000000\n')
    publish(broker, [("sensors/t1", json.dumps({"value": 1.5, "ts": NOW - 30}), True)])

    agent = AgentProcess(config).start()
    agents.append(agent)
    agent.wait_for_log("subscribed to sensors/#")
    # the retained message came with the subscription, so before this one: once this one is
    # taken (its drop is logged at once), so is the retained reading, and nothing has committed
    publish(broker, [("sensors/marker", "not a reading", False)])
    agent.wait_for_log("dropped a reading on sensors/marker")
    agent.signal(signal.SIGKILL)
    agent.wait(15)
    box = Outbox.open_readonly(data_dir)
    try:
        saved, _ = box.checkpoint()
    finally:
        box.close()
    assert not any(key.startswith("retained:") for key in saved.get("~source:dev", {})), saved

    config.write_text(normal)
    status = run_once(config, broker, agents, [], expect_received=2)
    assert summaries(data_dir) == {"t1": {"count": 1, "min": 1.5, "max": 1.5}}
    assert status["sources"]["dev"]["accepted"] == 1


def test_retained_skip_and_always(tmp_path, broker: Broker, agents) -> None:

    publish(broker, [("sensors/r", json.dumps({"value": 3.0, "ts": NOW - 30}), True)])
    config = source_config(tmp_path, broker, 'topics = ["sensors/#"]\nretained = "skip"', ["sensors/#"])
    status = run_once(config, broker, agents, [("sensors/live", "4.0", False)], expect_received=2)
    assert status["sources"]["dev"]["retained_skipped"] == 1
    assert set(summaries(tmp_path / "data")) == {"live"}

def test_a_reload_applies_a_new_max_clock_skew_to_the_sources(tmp_path, broker: Broker, agents) -> None:
    """Two hours ahead passes the default day of skew; after a reload to one hour it is bad_ts."""
    config = source_config(tmp_path, broker, 'topics = ["sensors/#"]', ["sensors/#"])
    day = config.read_text()
    data_dir = tmp_path / "data"
    agent = AgentProcess(config).start()
    agents.append(agent)
    ahead = time.time() + 7200
    publish(broker, [("sensors/before", json.dumps({"value": 1.0, "ts": ahead}), False)])
    wait_received(data_dir, 1)

    config.write_text(day.replace('device_id = "test-gw"', 'device_id = "test-gw"\nmax_clock_skew = "1h"'))
    agent.signal(signal.SIGHUP)
    agent.wait_for_log("reloaded")
    publish(broker, [("sensors/after", json.dumps({"value": 2.0, "ts": ahead}), False)])
    wait_received(data_dir, 2)
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0, agent.output()
    assert read_status(data_dir)["dropped"] == {"bad_ts": 1}
    assert values(data_dir) == {"before": 1.0}


def test_a_millisecond_timestamp_is_refused_as_bad_ts(tmp_path, broker: Broker, agents) -> None:
    config = source_config(tmp_path, broker, 'topics = ["sensors/#"]', ["sensors/#"])
    status = run_once(config, broker, agents, [
        ("sensors/ms", json.dumps({"value": 1.0, "ts": int(NOW * 1000)}), False),
        ("sensors/iso", json.dumps({"value": 2.0, "ts": ISO_UTC}), False),
    ])
    assert status["dropped"] == {"bad_ts": 1}
    assert values(tmp_path / "data") == {"iso": 2.0}
    log = (tmp_path / "agent.log").read_text()
    assert "dropped a reading on sensors/ms: bad_ts" in log

"""The payload mapping on its own: sensor ids, values, reading times and tallies per format,
on messages in the shapes the firmwares' documentation shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.api import Record
from agent.config import validate_config
from agent.errors import ConfigError
from agent.sources.payload import PayloadConfig, PayloadMapping, Tally, build_mapper
from agent.sources.readings import Rejected

NOW = 1_700_000_000.0


def run(fmt: str, topic: str, payload: bytes | str, payload_config: dict[str, Any] | None = None,
        now: float = NOW) -> tuple[list[Record], Tally]:
    mapper = build_mapper(fmt, PayloadConfig(**payload_config) if payload_config is not None else None)
    assert mapper is not None
    out: list[Record] = []
    tally = Tally()
    if mapper.excludes(topic):
        tally.excluded += 1
        return out, tally
    raw = payload.encode() if isinstance(payload, str) else payload
    mapper.handle(topic, raw, now, out, tally)
    return out, tally


def readings(out: list[Record]) -> dict[str, Any]:
    return {record.data["sensor"]: record.data["value"] for record in out}


# -- format = "json" on shapes no preset covers --------------------------------------------------

def test_thingsboard_style_ts_and_values() -> None:
    payload = '{"ts": 1699999990000, "values": {"temp": 21.5, "hum": "40"}}'
    config = {"fields": ["values.*"], "sensor": "{topic[1]}/{name}", "ts": "ts", "ts_format": "unix_ms"}
    out, tally = run("json", "tb/gw1/telemetry", payload, config)
    assert readings(out) == {"gw1/temp": 21.5, "gw1/hum": 40.0}
    assert {record.ts for record in out} == {1_699_999_990.0}
    assert tally.fields_ignored == 0


def test_an_array_of_objects_each_with_its_id() -> None:
    payload = json.dumps([
        {"id": "t1", "temperature": 20.5, "ts": "2023-11-14T22:13:00Z"},
        {"id": "t2", "temperature": 19.0, "ts": "2023-11-14T22:13:10Z"},
        "not an object",
    ])
    out, tally = run("json", "site/a/batch", payload, {
        "each": ".", "fields": ["temperature"], "sensor": "{topic[1]}/{item.id}/{name}", "ts": "ts",
    })
    assert readings(out) == {"a/t1/temperature": 20.5, "a/t2/temperature": 19.0}
    assert [record.ts for record in out] == [1_699_999_980.0, 1_699_999_990.0]
    assert tally.fields_ignored == 1


def test_a_nested_vendor_object_with_wildcards_units_and_where() -> None:
    payload = json.dumps({
        "kind": "report", "device": {"serial": "X-17"},
        "sensors": {"bme280": {"temperature": 22.1, "pressure": 1013.2, "status": "ok"},
                    "sht31": {"temperature": 22.4, "humidity": 41.0}},
    })
    config = {"fields": ["sensors.*.*"], "sensor": "{item.device.serial}/{field[1:]}",
              "units": {"temperature": "C", "sensors.bme280.pressure": "hPa"}, "where": "kind == 'report'"}
    out, tally = run("json", "vendor/x", payload, config)
    assert readings(out) == {"X-17/bme280/temperature": 22.1, "X-17/bme280/pressure": 1013.2,
                             "X-17/sht31/temperature": 22.4, "X-17/sht31/humidity": 41.0}
    units = {record.data["sensor"]: record.data.get("unit") for record in out}
    assert units["X-17/bme280/pressure"] == "hPa" and units["X-17/sht31/temperature"] == "C"
    assert units["X-17/sht31/humidity"] is None
    assert tally.fields_ignored == 1  # "status": "ok"
    out, tally = run("json", "vendor/x", json.dumps({"kind": "hello"}), config)
    assert out == [] and tally.excluded == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [(21.5, 21.5), ("37.00", 37.0), (True, 1), (False, 0), ("ON", 1), ("OFF", 0), ("OPEN", 1),
     ("CLOSED", 0), ("on", 1), (" 7 ", 7.0), (3, 3)],
)
def test_values_that_are_readings(value: Any, expected: Any) -> None:
    out, _ = run("json", "d/x", json.dumps({"v": value}))
    assert readings(out) == {"d/x/v": expected}


@pytest.mark.parametrize("value", ["idle", None, {"a": 1}, [1, 2], "x" * 100])
def test_values_that_are_not_readings_are_ignored_not_dropped(value: Any) -> None:
    out, tally = run("json", "d/x", json.dumps({"v": value}))
    assert out == [] and tally.fields_ignored == 1 and tally.dropped == {}


def test_a_value_that_is_not_finite_drops_that_reading_only() -> None:
    out, tally = run("json", "d/x", '{"a": "nan", "b": "-inf", "c": 2}')
    assert readings(out) == {"d/x/c": 2} and tally.dropped == {"value_not_finite": 2}


@pytest.mark.parametrize(
    ("ts", "ts_format", "expected"),
    [(1_699_999_000, "unix", 1_699_999_000.0), (1_699_999_000_000, "unix_ms", 1_699_999_000.0),
     (1_699_999_000_000_000, "unix_us", 1_699_999_000.0), ("1699999000", "unix", 1_699_999_000.0),
     (1_699_999_000_000_000_000, "unix_ns", 1_699_999_000.0),
     ("2023-11-14T22:03:20+00:00", "iso8601", 1_699_999_400.0),
     ("2023-11-14T23:03:20", "iso8601", 1_699_999_400.0)],  # Europe/Berlin, no offset given
)
def test_reading_times(ts: Any, ts_format: str, expected: float) -> None:
    out, _ = run("json", "d/x", json.dumps({"t": ts, "v": 1}),
                 {"ts": "t", "ts_format": ts_format, "timezone": "Europe/Berlin"})
    assert [record.ts for record in out] == [expected]


@pytest.mark.parametrize(
    "ts", [1_700_000_000_000, "yesterday", True, [1], -5, float("inf"), float("nan"), 10**400, "1e400"]
)
def test_a_time_that_is_not_one_refuses_the_message_as_bad_ts(ts: Any) -> None:
    """A millisecond time read as seconds is the year 55,800: more than a day ahead."""
    mapping = PayloadMapping(PayloadConfig(ts="t"))
    with pytest.raises(Rejected, match="bad_ts"):
        mapping.map("d/x", {"t": ts, "v": 1}, NOW, [], Tally())


def test_a_missing_path_is_not_an_error() -> None:
    out, tally = run("json", "d/x", '{"other": 1}', {"fields": ["temperature"], "ts": "t"})
    assert out == [] and tally.empty == 1 and tally.dropped == {}


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(Rejected, match="not_an_object"):
        run("json", "d/x", '"hello"')
    with pytest.raises(Rejected, match="not_json"):
        run("json", "d/x", b"\xff")


# -- presets -------------------------------------------------------------------------------------

PRESET_CASES = [
    # Zigbee2MQTT: a state object; strings that are numbers, binary states; last_seen in ms
    ("zigbee2mqtt", "zigbee2mqtt/living_room",
     '{"battery":"37.00","humidity":54.21,"linkquality":120,"temperature":21.5,"voltage":2995,'
     '"occupancy":true,"state":"ON","last_seen":1699999999000,"update":{"state":"idle"}}',
     {"living_room/battery": 37.0, "living_room/humidity": 54.21, "living_room/linkquality": 120,
      "living_room/temperature": 21.5, "living_room/voltage": 2995, "living_room/occupancy": 1,
      "living_room/state": 1}, 1_699_999_999.0),
    ("zigbee2mqtt", "zigbee2mqtt/garden/door",
     '{"contact":false,"last_seen":"2023-11-14T22:13:19.000Z"}', {"garden/door/contact": 0}, 1_699_999_999.0),
    # Tasmota: nested by sensor, local Time without offset (the test runs in UTC)
    ("tasmota", "tele/kitchen/SENSOR",
     '{"Time":"2023-11-14T22:13:19","AM2301":{"Temperature":22.6,"Humidity":32.4},"TempUnit":"C"}',
     {"kitchen/AM2301/Temperature": 22.6, "kitchen/AM2301/Humidity": 32.4}, 1_699_999_999.0),
    ("tasmota", "tele/meter/SENSOR",
     '{"Time":"2023-11-14T22:13:19","ENERGY":{"TotalStartTime":"2019-01-01T00:00:00","Total":12.3,'
     '"Power":45,"Voltage":230}}',
     {"meter/ENERGY/Total": 12.3, "meter/ENERGY/Power": 45, "meter/ENERGY/Voltage": 230}, 1_699_999_999.0),
    # ESPHome: plain text states
    ("esphome", "livingroom/sensor/temperature/state", "21.50", {"livingroom/temperature": 21.5}, NOW),
    ("esphome", "livingroom/binary_sensor/window/state", "ON", {"livingroom/window": 1}, NOW),
    # Shelly Gen1 plain values, Gen2 JSON-RPC notifications
    ("shelly", "shellies/shelly1-B929CC/relay/0", "off", {"shelly1-B929CC/relay/0": 0}, NOW),
    ("shelly", "shellies/shellyht-6F2C39/sensor/temperature", "22.25",
     {"shellyht-6F2C39/sensor/temperature": 22.25}, NOW),
    ("shelly", "shellyplus1pm-a8032ab636ec/events/rpc",
     '{"src":"shellyplus1pm-a8032ab636ec","dst":"shellyplus1pm-a8032ab636ec/events","method":"NotifyStatus",'
     '"params":{"ts":1699999999.43,"switch:0":{"id":0,"apower":8.9,"aenergy":{"total":6.532,'
     '"by_minute":[45.9,0,0],"minute_ts":1699999980}}}}',
     {"shellyplus1pm-a8032ab636ec/switch:0/apower": 8.9,
      "shellyplus1pm-a8032ab636ec/switch:0/aenergy/total": 6.532,
      "shellyplus1pm-a8032ab636ec/switch:0/aenergy/minute_ts": 1699999980}, 1_699_999_999.43),
    ("shelly", "shellyplusht-1/events/rpc",
     '{"src":"shellyplusht-1","method":"NotifyStatus","params":{"ts":1699999999.0,'
     '"temperature:0":{"id":0,"tC":19.8,"tF":67.6}}}',
     {"shellyplusht-1/temperature:0/tC": 19.8, "shellyplusht-1/temperature:0/tF": 67.6}, 1_699_999_999.0),
    # Home Assistant statestream: JSON-encoded values
    ("homeassistant", "homeassistant/sensor/outside_temperature/state", '"21.5"',
     {"sensor.outside_temperature": 21.5}, NOW),
    ("homeassistant", "homeassistant/binary_sensor/front_door/state", '"off"',
     {"binary_sensor.front_door": 0}, NOW),
]


@pytest.mark.parametrize(("fmt", "topic", "payload", "expected", "ts"), PRESET_CASES)
def test_presets_give_these_sensor_ids_and_values(fmt: str, topic: str, payload: str,
                                                  expected: dict[str, Any], ts: float) -> None:
    out, tally = run(fmt, topic, payload)
    assert readings(out) == expected
    assert {record.ts for record in out} == {ts}
    assert all(record.topic == topic for record in out)
    assert tally.dropped == {}


@pytest.mark.parametrize(
    ("fmt", "topic", "payload"),
    [
        ("zigbee2mqtt", "zigbee2mqtt/bridge/state", '{"state":"online"}'),
        ("zigbee2mqtt", "zigbee2mqtt/living_room/availability", '{"state":"online"}'),
        ("zigbee2mqtt", "zigbee2mqtt/living_room/set", '{"state":"ON"}'),
        ("tasmota", "tele/kitchen/LWT", "Online"),
        ("tasmota", "tele/kitchen/STATE", '{"Time":"2023-11-14T22:13:19","Uptime":"0T00:01:00"}'),
        ("esphome", "livingroom/status", "online"),
        ("shelly", "shellies/shelly1-B929CC/online", "true"),
        ("shelly", "shellies/announce", '{"id":"shelly1-B929CC"}'),
        ("shelly", "shellies/shelly1-B929CC/relay/0/command", "on"),
        ("homeassistant", "homeassistant/sensor/outside_temperature/attributes", '{"unit":"C"}'),
        ("homeassistant", "homeassistant/sensor/outside_temperature/last_updated", '"2023-11-14"'),
    ],
)
def test_status_and_command_topics_are_excluded(fmt: str, topic: str, payload: str) -> None:
    out, tally = run(fmt, topic, payload)
    assert out == [] and tally.excluded == 1 and tally.dropped == {}


def test_esphome_nan_is_not_finite_and_text_sensors_are_ignored() -> None:
    with pytest.raises(Rejected, match="value_not_finite"):
        run("esphome", "node/sensor/temperature/state", "nan")
    out, tally = run("esphome", "node/text_sensor/version/state", "2023.11.0 (beta)")
    assert out == [] and tally.fields_ignored == 1


def test_shelly_gen2_events_other_than_status_are_excluded() -> None:
    out, tally = run("shelly", "shellyplus1-1/events/rpc",
                     '{"src":"shellyplus1-1","method":"NotifyEvent","params":{"ts":1.0,"events":[]}}')
    assert out == [] and tally.excluded == 1


def test_tasmota_gives_the_temperature_unit_it_names() -> None:
    out, _ = run("tasmota", "tele/t/SENSOR", '{"Time":"2023-11-14T22:13:19","DS18B20":{"Temperature":71.2},'
                                             '"TempUnit":"F"}')
    assert [record.data.get("unit") for record in out] == ["F"]


def test_a_plain_text_payload_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(Rejected, match="not_text"):
        run("esphome", "node/sensor/t/state", b"\xff\xfe")


def test_the_pure_mapping_takes_decoded_payloads() -> None:
    mapping = PayloadMapping(PayloadConfig(fields=["a", "b.c"], sensor="{name}"))
    out: list[Record] = []
    mapping.map("any", {"a": 1, "b": {"c": "2"}}, NOW, out, Tally())
    assert readings(out) == {"a": 1, "c": 2.0}


# -- config --------------------------------------------------------------------------------------

def _check(source: dict[str, Any], tmp_path: Path) -> list[str]:
    raw = {"device_id": "d", "data_dir": str(tmp_path), "sources": [{"name": "s", "type": "mqtt", **source}]}
    try:
        validate_config(raw, tmp_path / "agent.toml")
    except ConfigError as exc:
        return [f"{issue.path}: {issue.reason}" for issue in exc.issues]
    return []


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ({"format": "json", "payload": {"fields": ["a..b"]}}, "an empty level"),
        ({"format": "json", "payload": {"fields": ["a*"]}}, "'*' must be a whole level"),
        ({"format": "json", "payload": {"sensor": "{topik[1]}"}}, "unknown placeholder {topik[1]}"),
        ({"format": "json", "payload": {"ts": "a.*"}}, "no '*' here"),
        ({"format": "json", "payload": {"timezone": "Mars/Olympus"}}, "not a time zone name"),
        ({"format": "json", "payload": {"where": "method = 'x'"}}, "column"),
        ({"format": "json", "payload": {"ts_format": "unix_s"}}, "ts_format"),
        ({"format": "json", "payload": {"colour": 1}}, "payload.colour: unknown key"),
        ({"payload": {"fields": ["a"]}}, 'goes with format = "json" or a preset'),
        ({"format": "tasmota", "payload": {"fields": ["a"]}}, "may set only timezone and units, not fields"),
        ({"format": "xml"}, "format"),
        ({"retained": "twice"}, "retained"),
        ({"exclude": ["a/#/b"]}, "exclude"),
    ],
)
def test_config_errors_name_what_is_wrong(source: dict[str, Any], error: str, tmp_path: Path) -> None:
    issues = _check(source, tmp_path)
    assert issues and any(error in issue for issue in issues), issues


def test_a_preset_subscribes_to_its_firmware_topics_unless_told(tmp_path: Path) -> None:
    raw = {"device_id": "d", "data_dir": str(tmp_path), "max_clock_skew": "1h", "sources": [
        {"name": "z", "type": "mqtt", "format": "zigbee2mqtt"},
        {"name": "t", "type": "mqtt", "format": "tasmota", "topics": ["tasmota/tele/+/SENSOR"],
         "payload": {"timezone": "Europe/Berlin"}},
    ]}
    loaded = validate_config(raw, tmp_path / "agent.toml")
    z, t = loaded.agent.sources
    assert z.topics == ["zigbee2mqtt/#"] and t.topics == ["tasmota/tele/+/SENSOR"]
    assert loaded.agent.max_clock_skew == 3600.0


# -- Sparkplug B ---------------------------------------------------------------------------------

def test_sparkplug_births_name_aliases_that_data_then_uses() -> None:
    from tests.sparkplug_helpers import BOOLEAN, DOUBLE, INT32, INT64, STRING, payload

    mapper = build_mapper("sparkplug_b")
    assert mapper is not None
    out: list[Record] = []
    tally = Tally()
    ms = int(NOW * 1000) - 5000
    birth = payload(ms,
                    {"name": "bdSeq", "datatype": INT64, "value": 0},
                    {"name": "Node Control/Rebirth", "datatype": BOOLEAN, "value": False},
                    {"name": "Inputs/Temperature", "alias": 1, "datatype": DOUBLE, "value": 20.5},
                    {"name": "Inputs/Offset", "alias": 2, "datatype": INT32, "value": -3})
    mapper.handle("spBv1.0/plant1/NBIRTH/edge7", birth, NOW, out, tally)
    data = payload(ms + 1000,
                   {"alias": 1, "datatype": DOUBLE, "value": 21.25, "timestamp": ms + 900},
                   {"alias": 2, "datatype": INT32, "value": -7},
                   {"alias": 9, "datatype": DOUBLE, "value": 1.0},
                   {"name": "Status", "datatype": STRING, "value": "running"})
    mapper.handle("spBv1.0/plant1/NDATA/edge7", data, NOW, out, tally)
    got = [(r.data["sensor"], r.data["value"], r.ts) for r in out]
    assert got == [
        ("plant1/edge7/Inputs/Temperature", 20.5, ms / 1000), ("plant1/edge7/Inputs/Offset", -3, ms / 1000),
        ("plant1/edge7/Inputs/Temperature", 21.25, (ms + 900) / 1000),
        ("plant1/edge7/Inputs/Offset", -7, (ms + 1000) / 1000),
    ]
    assert tally.dropped == {"unknown_alias": 1} and tally.fields_ignored == 3


def test_sparkplug_device_metrics_and_what_is_not_a_reading() -> None:
    from tests.sparkplug_helpers import DOUBLE, INT64, payload

    ms = int(NOW * 1000)
    birth = payload(ms, {"name": "Level", "alias": 5, "datatype": DOUBLE, "value": 1.5})
    out, _ = run("sparkplug_b", "spBv1.0/g/DBIRTH/edge/tank1", birth)
    assert readings(out) == {"g/edge/tank1/Level": 1.5}
    for topic in ("spBv1.0/g/NDEATH/edge", "spBv1.0/g/DCMD/edge/tank1", "spBv1.0/STATE/host1", "other/x"):
        _, tally = run("sparkplug_b", topic, birth)
        assert tally.excluded == 1, topic
    with pytest.raises(Rejected, match="not_protobuf"):
        run("sparkplug_b", "spBv1.0/g/NDATA/edge", b"\xff\xff\xff")
    mapper = build_mapper("sparkplug_b")
    assert mapper is not None
    tally = Tally()
    micro = payload(ms * 1000, {"name": "x", "datatype": INT64, "value": 1})  # microseconds: far ahead
    mapper.handle("spBv1.0/g/NDATA/edge", micro, NOW, [], tally)
    assert tally.dropped == {"bad_ts": 1}

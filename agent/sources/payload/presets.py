"""The mappings that gateway firmwares need, each written from its firmware's documentation
(docs/sources/<format>.md cites the pages). A preset is either a ``PayloadMapping`` with a fixed
table, or, for firmwares that publish one plain value per topic, a mapping by topic.

Each preset also knows which of its firmware's topics are not readings (bridge state, last
wills, device info, commands): those are ``excluded`` before decoding, not counted as drops.
"""

from __future__ import annotations

from typing import Any

from agent import codec
from agent.api import Record
from agent.sources.payload.config import PayloadConfig
from agent.sources.payload.mapping import PayloadMapping, PrefixOf, Tally
from agent.sources.payload.values import to_value
from agent.sources.readings import NOT_JSON, Rejected

NOT_TEXT = "not_text"
"""Drop reason: a plain-text payload that is not UTF-8."""


class JsonMapper:
    """A ``PayloadMapping`` on JSON payloads, with the topics a firmware uses for other things."""

    def __init__(self, mapping: PayloadMapping) -> None:
        self.mapping = mapping

    def excludes(self, topic: str) -> bool:
        """Whether ``topic`` carries no readings (skipped before decoding, counted as excluded)."""
        return False

    def handle(self, topic: str, payload: bytes, now: float, out: list[Record], tally: Tally) -> None:
        """Decode ``payload`` and append its readings to ``out``; ``Rejected`` when the message as
        a whole is refused."""
        try:
            body = codec.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise Rejected(NOT_JSON) from None
        self.mapping.map(topic, body, now, out, tally)


def preset_config(base: dict[str, Any], user: PayloadConfig | None) -> PayloadConfig:
    """A preset's table, with the ``timezone`` and ``units`` the operator set."""
    if user is not None:
        base = {**base, "timezone": user.timezone, "units": {**base.get("units", {}), **user.units}}
    return PayloadConfig(**base)


# -- Zigbee2MQTT ---------------------------------------------------------------------------------

Z2M_TABLE: dict[str, Any] = {
    "fields": ["*"], "sensor": "{topic[1:]}/{field}", "ts": "last_seen", "ts_format": "unix_ms",
}
_Z2M_NOT_STATE = frozenset({"availability", "set", "get"})


class Zigbee2Mqtt(JsonMapper):
    """``zigbee2mqtt/<friendly name>`` state objects; ``bridge/...``, ``.../availability`` and
    the ``set``/``get`` requests other clients publish are not readings."""

    def excludes(self, topic: str) -> bool:
        levels = topic.split("/")
        return len(levels) < 2 or levels[1] == "bridge" or levels[-1] in _Z2M_NOT_STATE


# -- Tasmota -------------------------------------------------------------------------------------

TASMOTA_TABLE: dict[str, Any] = {
    "fields": ["*", "*.*"], "ignore": ["TempUnit", "PressureUnit", "SpeedUnit"],
    "sensor": "{topic[1:-1]}/{field}", "ts": "Time", "ts_format": "iso8601",
}


class TasmotaMapping(PayloadMapping):
    """Units named in the payload: ``TempUnit`` for temperatures and dew points,
    ``PressureUnit`` for pressures."""

    def unit_key(self, name: str) -> str | None:
        if name.startswith(("Temperature", "DewPoint")):
            return "TempUnit"
        if name.endswith("Pressure"):
            return "PressureUnit"
        return None

    def payload_units(self, item: Any) -> dict[str, str] | None:
        if type(item) is not dict:
            return None
        units = {key: unit for key in _UNIT_FIELDS if type(unit := item.get(key)) is str}
        return units or None


_UNIT_FIELDS = ("TempUnit", "PressureUnit")


class Tasmota(JsonMapper):
    """``tele/<topic>/SENSOR`` telemetry; ``LWT``, ``STATE``, ``RESULT``... are not readings."""

    def excludes(self, topic: str) -> bool:
        return not topic.endswith("/SENSOR")


# -- one plain value per topic -------------------------------------------------------------------


class TopicValueMapper:
    """Firmwares that publish one value per topic, as plain text or JSON-encoded (``21.50``,
    ``"21.5"``, ``ON``, ``nan``); the sensor id comes from the topic alone."""

    def __init__(self, prefix_of: PrefixOf | None = None) -> None:
        self._prefix_of = prefix_of
        self._sensors: dict[str, tuple[str, str] | None] = {}  # topic -> (sensor, its topic)

    def sensor_of(self, levels: list[str]) -> str | None:
        """The sensor id of a topic, None when the topic carries no reading."""
        raise NotImplementedError

    def excludes(self, topic: str) -> bool:
        return self._sensor(topic) is None

    def handle(self, topic: str, payload: bytes, now: float, out: list[Record], tally: Tally) -> None:
        placed = self._sensor(topic)
        if placed is None:
            tally.excluded += 1
            return
        value = to_value(plain_value(payload))
        if value is None:
            tally.fields_ignored += 1
            return
        out.append(Record(placed[1], now, {"sensor": placed[0], "value": value}))

    def _sensor(self, topic: str) -> tuple[str, str] | None:
        try:
            return self._sensors[topic]
        except KeyError:
            pass
        if len(self._sensors) >= 100_000:
            self._sensors.clear()
        sensor = self.sensor_of(topic.split("/"))
        placed = None
        if sensor is not None:
            placed = (sensor, topic if self._prefix_of is None else self._prefix_of(topic) + sensor)
        self._sensors[topic] = placed
        return placed


def plain_value(payload: bytes) -> Any:
    """A JSON value when the payload is JSON, else its text (``ON``, ``nan``, ``on``)."""
    try:
        return codec.loads(payload)
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        return payload.decode().strip()
    except UnicodeDecodeError:
        raise Rejected(NOT_TEXT) from None


_ESPHOME_COMPONENTS = frozenset({"sensor", "binary_sensor", "switch", "number", "text_sensor"})


class EspHome(TopicValueMapper):
    """``<node>/<component>/<name>/state`` → ``<node>/<name>``; ``<node>/status`` and command
    topics are not readings."""

    def sensor_of(self, levels: list[str]) -> str | None:
        if len(levels) >= 4 and levels[-1] == "state" and levels[-3] in _ESPHOME_COMPONENTS:
            return "/".join(levels[:-3]) + "/" + levels[-2]
        return None


_SHELLY_NOT_STATE = frozenset({"command", "announce", "info", "online", "set"})


class ShellyGen1(TopicValueMapper):
    """``shellies/<id>/<path>`` → ``<id>/<path>``; announcements, info, the online flag and
    commands are not readings."""

    def sensor_of(self, levels: list[str]) -> str | None:
        if len(levels) < 3 or levels[0] != "shellies" or _SHELLY_NOT_STATE & set(levels[2:]):
            return None
        return "/".join(levels[1:])


class HomeAssistant(TopicValueMapper):
    """Statestream ``<base>/<domain>/<object_id>/state`` → ``<domain>.<object_id>``; the
    ``attributes``, ``last_updated`` and ``last_changed`` topics are not readings."""

    def sensor_of(self, levels: list[str]) -> str | None:
        if len(levels) >= 4 and levels[-1] == "state":
            return f"{levels[-3]}.{levels[-2]}"
        return None


# -- Shelly: Gen1 plain values, Gen2 JSON-RPC notifications --------------------------------------

SHELLY_GEN2_TABLE: dict[str, Any] = {
    "fields": ["params.*.*", "params.*.*.*"], "ignore": ["params.*.id"],
    "sensor": "{item.src}/{field[1:]}", "ts": "params.ts",
    "where": "method == 'NotifyStatus' or method == 'NotifyFullStatus'",
}


class Shelly:
    """Gen1 devices on ``shellies/...``, Gen2 (Plus, Pro) notifications on ``<id>/events/rpc``."""

    def __init__(self, gen2: PayloadMapping, prefix_of: PrefixOf | None = None) -> None:
        self.gen1 = ShellyGen1(prefix_of)
        self.gen2 = JsonMapper(gen2)

    def excludes(self, topic: str) -> bool:
        if topic.endswith("/events/rpc"):
            return False
        return self.gen1.excludes(topic)

    def handle(self, topic: str, payload: bytes, now: float, out: list[Record], tally: Tally) -> None:
        if topic.endswith("/events/rpc"):
            self.gen2.handle(topic, payload, now, out, tally)
        else:
            self.gen1.handle(topic, payload, now, out, tally)

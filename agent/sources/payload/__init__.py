"""Payload mapping: what devices publish, as readings, declaratively.

``build_mapper(format, payload, max_skew, prefix_of)`` gives the mapper of a source's ``format``
(None for ``reading``, the agent's own shape, which the source decodes itself). Its readings go
on the bus as ``<prefix_of(topic)><sensor>``, as every source's readings do. A mapper says which
topics carry no readings (``excludes``) and turns one message into readings (``handle``),
tallying fields that are not readings and readings it refused. ``PayloadMapping`` is the pure
core, on payloads already decoded, for sources that decode JSON themselves.
"""

from __future__ import annotations

from typing import Protocol

from agent.api import Record
from agent.sources.payload.config import FORMATS, Format, PayloadConfig
from agent.sources.payload.mapping import NOT_AN_ARRAY, PayloadMapping, PrefixOf, Tally
from agent.sources.payload.presets import (
    NOT_TEXT,
    SHELLY_GEN2_TABLE,
    TASMOTA_TABLE,
    Z2M_TABLE,
    EspHome,
    HomeAssistant,
    JsonMapper,
    Shelly,
    Tasmota,
    TasmotaMapping,
    Zigbee2Mqtt,
    preset_config,
)
from agent.sources.readings import DEFAULT_MAX_CLOCK_SKEW


class Mapper(Protocol):
    def excludes(self, topic: str) -> bool:
        """Whether ``topic`` carries no readings: skipped before decoding, counted as excluded."""

    def handle(self, topic: str, payload: bytes, now: float, out: list[Record], tally: Tally) -> None:
        """Append the readings of one message to ``out``; ``Rejected`` refuses it as a whole."""


DEFAULT_TOPICS: dict[str, list[str]] = {
    "zigbee2mqtt": ["zigbee2mqtt/#"],
    "tasmota": ["tele/+/SENSOR"],
    "esphome": ["+/sensor/+/state", "+/binary_sensor/+/state"],
    "shelly": ["shellies/#", "+/events/rpc"],
    "homeassistant": ["homeassistant/+/+/state"],
    "sparkplug_b": ["spBv1.0/#"],
}
"""The topics a preset subscribes to when the source names none (each firmware's default)."""

PRESET_KEYS = frozenset({"timezone", "units"})
"""The ``[sources.payload]`` keys a preset lets the operator set; it fixes the others."""


def build_mapper(
    format: str, payload: PayloadConfig | None = None, max_skew: float | None = DEFAULT_MAX_CLOCK_SKEW,
    prefix_of: PrefixOf | None = None,
) -> Mapper | None:
    """The mapper of ``format`` (None for ``reading``); without ``prefix_of`` its readings keep
    the topic they came on."""
    if format == "reading":
        return None
    if format == "json":
        return JsonMapper(PayloadMapping(payload or PayloadConfig(), max_skew, prefix_of))
    if format == "zigbee2mqtt":
        return Zigbee2Mqtt(PayloadMapping(preset_config(Z2M_TABLE, payload), max_skew, prefix_of))
    if format == "tasmota":
        return Tasmota(TasmotaMapping(preset_config(TASMOTA_TABLE, payload), max_skew, prefix_of))
    if format == "esphome":
        return EspHome(prefix_of)
    if format == "shelly":
        gen2 = PayloadMapping(preset_config(SHELLY_GEN2_TABLE, payload), max_skew, prefix_of)
        return Shelly(gen2, prefix_of)
    if format == "homeassistant":
        return HomeAssistant(prefix_of)
    if format == "sparkplug_b":
        from agent.sources.payload.sparkplug import SparkplugB  # needs protobuf

        return SparkplugB(max_skew, prefix_of)
    raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")


__all__ = [
    "DEFAULT_TOPICS",
    "FORMATS",
    "NOT_AN_ARRAY",
    "NOT_TEXT",
    "PRESET_KEYS",
    "Format",
    "Mapper",
    "PayloadConfig",
    "PayloadMapping",
    "PrefixOf",
    "Tally",
    "build_mapper",
]

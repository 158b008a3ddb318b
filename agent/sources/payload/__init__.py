"""Payload mapping: what devices publish, as readings, declaratively.

``build_mapper(format, payload, max_skew)`` gives the mapper of a source's ``format`` (None for
``reading``, the agent's own shape, which the source decodes itself). A mapper says which
topics carry no readings (``excludes``) and turns one message into readings (``handle``),
tallying fields that are not readings and readings it refused. ``PayloadMapping`` is the pure
core, on payloads already decoded, for sources that decode JSON themselves.
"""

from __future__ import annotations

from typing import Protocol

from agent.api import Record
from agent.sources.payload.config import FORMATS, Format, PayloadConfig
from agent.sources.payload.mapping import NOT_AN_ARRAY, PayloadMapping, Tally
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
    format: str, payload: PayloadConfig | None = None, max_skew: float | None = DEFAULT_MAX_CLOCK_SKEW
) -> Mapper | None:
    """The mapper of ``format`` (None for ``reading``)."""
    if format == "reading":
        return None
    if format == "json":
        return JsonMapper(PayloadMapping(payload or PayloadConfig(), max_skew))
    if format == "zigbee2mqtt":
        return Zigbee2Mqtt(PayloadMapping(preset_config(Z2M_TABLE, payload), max_skew))
    if format == "tasmota":
        return Tasmota(TasmotaMapping(preset_config(TASMOTA_TABLE, payload), max_skew))
    if format == "esphome":
        return EspHome()
    if format == "shelly":
        return Shelly(PayloadMapping(preset_config(SHELLY_GEN2_TABLE, payload), max_skew))
    if format == "homeassistant":
        return HomeAssistant()
    if format == "sparkplug_b":
        from agent.sources.payload.sparkplug import SparkplugB  # needs protobuf

        return SparkplugB(max_skew)
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
    "Tally",
    "build_mapper",
]

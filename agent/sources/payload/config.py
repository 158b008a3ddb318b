"""The ``[sources.payload]`` table: which fields of a JSON payload are readings, how each is
named, and where its reading time is. Validated before any I/O, so a typo is a config error."""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agent.sources.payload.paths import split_path
from agent.sources.payload.template import compile_template

FORMATS = (
    "reading", "json", "zigbee2mqtt", "tasmota", "esphome", "shelly", "homeassistant", "sparkplug_b",
)
Format = Literal[
    "reading", "json", "zigbee2mqtt", "tasmota", "esphome", "shelly", "homeassistant", "sparkplug_b",
]
TsFormat = Literal["unix", "unix_ms", "unix_us", "unix_ns", "iso8601"]
TS_SCALE = {"unix": 1.0, "unix_ms": 1e-3, "unix_us": 1e-6, "unix_ns": 1e-9, "iso8601": 1.0}
"""Seconds per unit of a numeric reading time, by ``ts_format``."""



def _check_field(path: str) -> str:
    split_path(path)
    return path


def _check_plain_path(path: str) -> str:
    if path != ".":
        split_path(path, wildcards=False)
    return path


def _check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone name such as 'Europe/Berlin' or 'UTC'") from None
    return name


def _check_template(template: str) -> str:
    compile_template(template)
    return template


def _check_where(source: str) -> str:
    # The transform module's expression language; compiled here so that an error is a config
    # error with its column, not a surprise at the first message.
    from modules._expr import BOOL, compile_expression

    compile_expression(source, BOOL)
    return source


FieldPath = Annotated[str, AfterValidator(_check_field)]
PlainPath = Annotated[str, AfterValidator(_check_plain_path)]
Zone = Annotated[str, AfterValidator(_check_zone)]
Template = Annotated[str, AfterValidator(_check_template)]
Where = Annotated[str, AfterValidator(_check_where)]


class PayloadConfig(BaseModel):
    """How a JSON payload becomes readings: one reading per mapped field, each its own sensor."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    fields: Annotated[list[FieldPath], Field(min_length=1)] = ["*"]
    """Dotted paths of the fields that are readings; ``*`` matches one level (any key, or any
    element of an array). Default: every top-level field."""
    ignore: list[FieldPath] = []
    """Paths the ``fields`` match that are not readings and not worth counting (an ``id``)."""
    sensor: Template = "{topic}/{field}"
    """The sensor id: ``{topic}``, ``{topic[N]}`` or ``{topic[A:B]}`` (0-based levels, joined
    by /), ``{field}`` (the field's path, levels joined by /; sliced as topics are), ``{name}``
    (its last level), ``{item.PATH}`` (a value of the object, e.g. a device id), ``{index}``."""
    ts: PlainPath | None = None
    """Path of the reading time; absent (or missing in a message): the time of receipt."""
    ts_format: TsFormat = "unix"
    """How a numeric reading time counts: ``unix`` seconds, ``unix_ms``, ``unix_us``,
    ``unix_ns``. An ISO 8601 string is always understood (``iso8601`` says to expect one)."""
    timezone: Zone | None = None
    """The zone of ISO 8601 times without an offset; default: the gateway's own zone."""
    where: Where | None = None
    """Only objects for which this holds are mapped (the ``transform`` module's expression
    language over the object's top-level fields); the others are counted as ``excluded``."""
    units: dict[str, str] = {}
    """Unit by field path or by field name: ``{ temperature = "C" }``."""
    each: PlainPath | None = None
    """Path of an array whose every element is mapped as an object of its own (``"."``: the
    payload itself is the array); paths, ``where``, ``{item.PATH}`` are then per element."""

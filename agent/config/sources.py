"""The built-in sources' config sections, and how a ``[[sources]]`` entry finds its type's."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainValidator,
    StrictBool,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from agent.api import Source, SourceConfig
from agent.config.base import BrokerLogin, MqttUrl, SourceResolver, TopicFilter
from agent.errors import ModuleLoadError
from agent.extras import require
from agent.registry import resolve_source
from agent.sources.payload.config import Format, PayloadConfig
from agent.units import Name, Size


class MqttSourceConfig(BrokerLogin, SourceConfig):
    """Readings from an MQTT broker, normally the gateway's local one."""

    type: Literal["mqtt"]
    name: Name
    url: MqttUrl = "mqtt://127.0.0.1:1883"
    # pydantic fields (ruff cannot see the BaseModel behind BrokerLogin): pydantic copies defaults
    topics: Annotated[list[TopicFilter], Field(min_length=1)] = ["sensors/#"]  # noqa: RUF012
    qos: Literal[0, 1] = 1
    client_id: str | None = None
    """Defaults to ``<device_id>-<source name>``; keep it stable so the session persists."""
    persistent_session: StrictBool = True
    """Keep the broker session across restarts, so QoS 1 readings sent meanwhile arrive later."""
    max_payload: Size = 65536
    """Readings with a larger payload are dropped and counted as ``oversized``."""
    exclude: list[TopicFilter] = []  # noqa: RUF012
    """Topics skipped before decoding (status, last wills, discovery), counted as ``excluded``."""
    format: Format = "reading"
    """What the payloads are: ``reading`` (the agent's own ``{"value"}`` shape), ``json`` (mapped
    by ``[sources.payload]``) or a firmware's preset (docs/sources/)."""
    retained: Literal["once", "always", "skip"] = "once"
    """Retained messages: ``once`` takes each the first time only (also across reconnects and
    restarts), ``always`` every time the broker delivers it, ``skip`` never."""
    payload: PayloadConfig | None = None
    """The mapping of ``format = "json"``; with a preset, only ``timezone`` and ``units``."""

    @model_validator(mode="before")
    @classmethod
    def _preset_topics(cls, data: Any) -> Any:
        from agent.sources.payload import DEFAULT_TOPICS  # import cycle

        if isinstance(data, dict) and "topics" not in data and data.get("format") in DEFAULT_TOPICS:
            data = {**data, "topics": DEFAULT_TOPICS[data["format"]]}
        return data

    @model_validator(mode="after")
    def _payload_fits_format(self) -> MqttSourceConfig:
        from agent.sources.payload import PRESET_KEYS  # import cycle

        if self.format == "sparkplug_b":
            require("sparkplug", 'format = "sparkplug_b"', ("google.protobuf",))
        if self.payload is None or self.format == "json":
            return self
        if self.format == "reading":
            raise ValueError('[sources.payload] goes with format = "json" or a preset, not "reading"')
        fixed = sorted(self.payload.model_fields_set - PRESET_KEYS)
        if fixed:
            raise ValueError(
                f"format = {self.format!r} fixes the mapping; its [sources.payload] may set only "
                f"{' and '.join(sorted(PRESET_KEYS))}, not {', '.join(fixed)}"
            )
        return self

    ack: Literal["checkpoint", "receipt"] = "checkpoint"
    """When a QoS 1 reading is acknowledged to the broker: once the checkpoint holding its
    effect has committed (exactly once across a crash of the agent), or on receipt (faster; a
    crash loses what the agent held in memory)."""


class SimulatorSourceConfig(SourceConfig):
    """Synthetic readings, for trying the agent with no hardware."""

    type: Literal["simulator"]
    name: Name
    topic_prefix: str = "sensors/"
    sensors: Annotated[int, Field(ge=1, le=100_000)] = 4
    rate: Annotated[float, Field(gt=0, le=100_000)] = 1.0
    """Readings per second for each sensor."""
    seed: int | None = None


def _validate_source(raw: Any, info: ValidationInfo) -> SourceConfig:
    """A ``[[sources]]`` entry, checked against the ``Config`` of the source its ``type`` names
    (registered or ``path/to/file.py:Class``); the errors keep their place in the entry."""
    if isinstance(raw, SourceConfig):
        return raw
    if not isinstance(raw, dict):
        raise ValueError("each [[sources]] entry is a table")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise _type_error("required" if kind is None else "a source type name", kind)
    resolve: SourceResolver = (info.context or {}).get("resolve_source") or resolve_source
    try:
        cls = resolve(kind)
    except ModuleLoadError as exc:
        raise _type_error(exc.reason, kind) from None
    config = cls.Config.model_validate(raw, context=info.context)
    _SOURCE_CLASSES[type(config)] = cls
    return config


_SOURCE_CLASSES: dict[type[SourceConfig], type[Source[Any]]] = {}


def source_class(config: SourceConfig) -> type[Source[Any]]:
    """The source class whose ``Config`` validated ``config`` (nothing is imported again)."""
    return _SOURCE_CLASSES[type(config)]


def _type_error(reason: str, value: Any) -> ValidationError:
    return ValidationError.from_exception_data(
        "source",
        [{"type": "value_error", "loc": ("type",), "input": value, "ctx": {"error": ValueError(reason)}}],
    )


SourceEntry = Annotated[SourceConfig, PlainValidator(_validate_source)]
"""A ``[[sources]]`` entry, validated as the ``Config`` of its ``type``."""

"""Pairs the latest readings of a module's named inputs by a key, the way Node-RED's join node
is used: temperature and humidity of the same room, within a minute of each other, as one
record."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from agent import Module, ModuleConfig, PositiveDuration, Record


class JoinConfig(ModuleConfig):
    by: str = "sensor"
    """The field of each reading whose value pairs it with the others (a sensor id, a room)."""
    by_level: Annotated[int, Field(ge=0)] | None = None
    """Pair by this level of the topic instead (0 is the first: ``sensors/kitchen/temp`` has
    ``kitchen`` at level 1)."""
    max_skew: PositiveDuration = 60.0
    """Readings further apart in time than this are not paired."""
    field: str = "value"
    """The field of each reading that goes into the joined record, under its input's name."""
    max_keys: Annotated[int, Field(ge=1)] = 100_000
    """Readings of further keys are dropped and counted as ``too_many_keys``."""

    @model_validator(mode="after")
    def _one_key(self) -> JoinConfig:
        if self.by_level is not None and "by" in self.model_fields_set:
            raise ValueError("pair by a field (by) or by a topic level (by_level), not both")
        return self


class Join(Module[JoinConfig]):
    """Keeps the latest reading of each named input per key; when a reading arrives and every
    other input has one for its key within ``max_skew``, emits one record at the newest of their
    times: ``{<by>: key, <input>: <field of its reading>, ...}`` (the key under ``sensor`` when
    pairing by a topic level).

    A reading that came through no named input is counted as ``unnamed_input``, one without the
    key as ``no_key``, one without the field as ``no_field``; a reading older than its input's
    latest for the key as ``out_of_order``.
    """

    Config = JoinConfig
    description = "Pairs the latest readings of named inputs by a key within a maximum skew."

    async def start(self) -> None:
        self._latest: dict[Any, dict[str, tuple[float, Any]]] = {}
        self._key_name = self.config.by if self.config.by_level is None else "sensor"

    def process(self, record: Record) -> None:
        name = record.input
        counters = self.context.counters
        if name is None:
            counters.incr("unnamed_input")
            return
        key = self._key(record)
        if key is None:
            counters.incr("no_key")
            return
        if self.config.field not in record.data:
            counters.incr("no_field")
            return
        latest = self._latest.get(key)
        if latest is None:
            if len(self._latest) >= self.config.max_keys:
                counters.incr("too_many_keys")
                return
            latest = self._latest[key] = {}
        if name in latest and record.ts < latest[name][0]:
            counters.incr("out_of_order")
            return
        latest[name] = (record.ts, record.data[self.config.field])
        self._emit_if_paired(key, latest)

    def _key(self, record: Record) -> Any:
        level = self.config.by_level
        if level is None:
            return record.data.get(self.config.by)
        levels = record.topic.split("/")
        return levels[level] if level < len(levels) else None

    def _emit_if_paired(self, key: Any, latest: dict[str, tuple[float, Any]]) -> None:
        names = self.context.inputs
        if any(name not in latest for name in names):
            return
        times = [latest[name][0] for name in names]
        if max(times) - min(times) > self.config.max_skew:
            return
        data: dict[str, Any] = {self._key_name: key}
        data.update((name, latest[name][1]) for name in names)
        self.context.emit(data, ts=max(times))

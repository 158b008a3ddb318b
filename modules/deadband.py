"""Report by exception: pass a reading only when it has moved, or when it is time for a heartbeat."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import Field, model_validator

from agent import Context, Module, ModuleConfig, PositiveDuration, Record
from modules._common import NOT_A_NUMBER, NOT_FINITE, OUT_OF_ORDER, TOO_MANY_SENSORS


class DeadbandConfig(ModuleConfig):
    absolute: Annotated[float, Field(ge=0)] | None = None
    """Pass a reading that moved by more than this, in the sensor's unit."""
    relative: Annotated[float, Field(ge=0, le=10)] | None = None
    """Pass a reading that moved by more than this fraction of the last one passed (0.01 = 1 %).
    With ``absolute`` too, a reading must move by more than both: the absolute band keeps a
    relative one from shrinking to nothing near zero."""
    max_interval: PositiveDuration | None = None
    """Pass a reading anyway when this much reading time has gone by since the last one passed
    (a heartbeat, so silence means "no data", not "no change")."""
    max_sensors: Annotated[int, Field(ge=1)] = 100_000
    """Readings of further sensors are dropped and counted as ``too_many_sensors``."""

    @model_validator(mode="after")
    def _a_band(self) -> DeadbandConfig:
        if self.absolute is None and self.relative is None:
            raise ValueError("set absolute, relative or both: without a band nothing is filtered")
        return self


class Deadband(Module[DeadbandConfig]):
    """Passes a sensor's reading when it differs from the last one passed by more than the band,
    or when ``max_interval`` has gone by; drops the rest (counted as ``suppressed``).

    The first reading of a sensor always passes. A reading older than the last one passed is
    counted as ``out_of_order`` and dropped. Non-numbers and NaN/infinities are counted and
    dropped. The last value passed per sensor is kept in the module's state, so a restart does
    not send every sensor again.
    """

    Config = DeadbandConfig
    description = "Report by exception: pass a reading when it moves beyond a band, or on a heartbeat."

    def __init__(self, config: DeadbandConfig, context: Context) -> None:
        super().__init__(config, context)
        self._absolute = config.absolute or 0.0
        self._relative = config.relative or 0.0
        self._max_interval = config.max_interval

    async def start(self) -> None:
        # sensor -> [value, ts] of the last reading passed; survives restarts.
        self._last: dict[str, list[float]] = self.context.state.setdefault("last", {})

    def process(self, record: Record) -> None:
        self.process_batch((record,))

    def process_batch(self, records: Iterable[Record]) -> None:
        last_passed = self._last
        absolute, relative, heartbeat = self._absolute, self._relative, self._max_interval
        emit = self.context.emit
        suppressed = 0
        for record in records:
            data = record.data
            value: Any = data.get("value")  # checked just below, without isinstance (hot path)
            kind = type(value)
            if kind is not float and kind is not int:
                self.context.counters.incr(NOT_A_NUMBER)
                continue
            if value - value != 0:
                self.context.counters.incr(NOT_FINITE)
                continue
            sensor = data.get("sensor") or record.topic
            ts = record.ts
            last = last_passed.get(sensor)
            if last is not None:
                last_value, last_ts = last
                if ts < last_ts:
                    self.context.counters.incr(OUT_OF_ORDER)
                    continue
                band = relative * abs(last_value)
                if band < absolute:
                    band = absolute
                if abs(value - last_value) <= band and (
                    heartbeat is None or ts - last_ts < heartbeat
                ):
                    suppressed += 1
                    continue
            elif len(last_passed) >= self.config.max_sensors:
                self.context.counters.incr(TOO_MANY_SENSORS)
                continue
            last_passed[sensor] = [value, ts]
            emit(data, ts)
        if suppressed:
            self.context.counters.incr("suppressed", suppressed)

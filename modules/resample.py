"""Regular intervals from irregular readings: one value per sensor and interval, with an
aggregation and an explicit policy for intervals that got no reading."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from agent import Context, Duration, Module, ModuleConfig, PositiveDuration, Record
from modules._common import TOO_MANY_SENSORS, ClockWatch, due_to_close, sensor_of, shift_arrivals, value_of
from modules._quantiles import QuantileSketch, SketchShape

Aggregation = Literal["mean", "median", "first", "last", "min", "max", "sum", "count"]
GapPolicy = Literal["leave", "hold", "interpolate"]
MAX_FILL = 10_000
"""A gap of more intervals than this is left empty (counted as ``gap_too_long``), whatever the
policy: a sensor back after a month must not flood the outbox."""

_N, _SUM, _MIN, _MAX, _FIRST, _FIRST_TS, _LAST, _LAST_TS, _SKETCH = range(9)


class ResampleConfig(ModuleConfig):
    every: PositiveDuration = 60.0
    """Interval length; intervals are aligned on multiples of it since the Unix epoch."""
    agg: Aggregation = "mean"
    """How the readings of one interval make its value."""
    gap: GapPolicy = "leave"
    """Intervals with no reading: ``leave`` them out, ``hold`` the last value, or
    ``interpolate`` linearly between the values either side."""
    gap_limit: PositiveDuration | None = None
    """Fill only gaps up to this long (the "limited" policy); longer ones are left out."""
    lateness: Duration = 0.0
    """How far behind a sensor's newest reading a reading may be and still count."""
    timeout: Duration = 5.0
    """With no newer reading, an interval closes this long after its end."""
    max_sensors: Annotated[int, Field(ge=1)] = 100_000

    @model_validator(mode="after")
    def _limit_needs_a_fill(self) -> ResampleConfig:
        if self.gap_limit is not None and self.gap == "leave":
            raise ValueError("gap_limit limits filling: set gap to hold or interpolate, too")
        if self.gap == "interpolate" and self.agg == "count":
            raise ValueError("interpolating counts makes no sense: use gap = 'leave' or 'hold'")
        return self


class _Sensor:
    __slots__ = ("arrived", "closed_until", "last_start", "last_value", "newest", "next_close",
                 "open", "unit")

    def __init__(self) -> None:
        self.open: dict[float, list[Any]] = {}
        self.newest = -math.inf
        self.arrived = -math.inf
        self.closed_until = -math.inf
        self.next_close = math.inf
        self.last_start: float | None = None  # the last interval emitted with readings
        self.last_value = 0.0
        self.unit: str | None = None


class Resample(Module[ResampleConfig]):
    """Emits, per sensor and interval, a reading-shaped record ``{"sensor", "value", "count"}``
    (plus ``"unit"`` when the readings had one) at the interval's start, so that other modules
    can take it as input. Filled intervals have ``count`` 0 and ``"filled": "hold"`` or
    ``"interpolate"``; they are emitted when the next reading closes the gap.

    An interval closes like a window (see ``window``). Readings for an interval already closed,
    or due to close (its end is at or before the sensor's newest reading time minus
    ``lateness``), are counted as ``late``; non-numbers and NaN/infinities are counted and
    dropped.
    """

    Config = ResampleConfig
    description = "Regular intervals from irregular readings, with an aggregation and a gap policy."

    def __init__(self, config: ResampleConfig, context: Context) -> None:
        super().__init__(config, context)
        self._sensors: dict[str, _Sensor] = {}
        self._shape = SketchShape() if config.agg == "median" else None
        self._clock = ClockWatch()

    def process(self, record: Record) -> None:
        self.process_batch((record,))

    def process_batch(self, records: Iterable[Record]) -> None:
        now = self.context.clock()
        self._clock_jumped(now)
        every, lateness = self.config.every, self.config.lateness
        for record in records:
            value = value_of(record, self.context.counters)
            if value is None:
                continue
            name = sensor_of(record)
            sensor = self._sensors.get(name) or self._new_sensor(name)
            if sensor is None:
                continue
            ts = record.ts
            start = ts // every * every
            if start < sensor.closed_until or (
                start not in sensor.open and start + every <= sensor.newest - lateness
            ):
                self.context.counters.incr("late")
                continue
            self._add(sensor, start, value, ts)
            unit = record.data.get("unit")
            if type(unit) is str:
                sensor.unit = unit
            if ts >= sensor.newest:
                sensor.newest, sensor.arrived = ts, now
                if ts - lateness >= sensor.next_close:
                    self._close(name, sensor, ts - lateness)

    def tick(self, now: float) -> None:
        self._clock_jumped(now)
        wait = self.config.timeout + self.config.lateness
        for name, sensor, watermark in due_to_close(self._sensors, now, wait):
            self._close(name, sensor, watermark)

    async def stop(self) -> None:
        for name, sensor in list(self._sensors.items()):
            if sensor.open:
                self._close(name, sensor, math.inf)

    def _clock_jumped(self, now: float) -> None:
        if jump := self._clock.jump(now):
            shift_arrivals(self._sensors.values(), jump)

    def _new_sensor(self, name: str) -> _Sensor | None:
        if len(self._sensors) >= self.config.max_sensors:
            self.context.counters.incr(TOO_MANY_SENSORS)
            return None
        sensor = self._sensors[name] = _Sensor()
        return sensor

    def _add(self, sensor: _Sensor, start: float, value: float, ts: float) -> None:
        acc = sensor.open.get(start)
        if acc is None:
            sketch = QuantileSketch(self._shape) if self._shape is not None else None
            acc = sensor.open[start] = [0, 0.0, value, value, value, ts, value, ts, sketch]
            sensor.next_close = min(sensor.next_close, start + self.config.every)
        acc[_N] += 1
        acc[_SUM] += value
        acc[_MIN] = min(acc[_MIN], value)
        acc[_MAX] = max(acc[_MAX], value)
        if ts < acc[_FIRST_TS]:
            acc[_FIRST], acc[_FIRST_TS] = value, ts
        if ts >= acc[_LAST_TS]:
            acc[_LAST], acc[_LAST_TS] = value, ts
        if acc[_SKETCH] is not None:
            acc[_SKETCH].add(value)

    def _close(self, name: str, sensor: _Sensor, watermark: float) -> None:
        every = self.config.every
        sensor.next_close = math.inf
        for start in sorted(sensor.open):
            if start + every > watermark:
                sensor.next_close = start + every
                return
            acc = sensor.open.pop(start)
            value = self._aggregate(acc)
            if sensor.last_start is not None:
                self._fill(name, sensor, start, value)
            self._emit(name, sensor, start, value, acc[_N])
            sensor.last_start, sensor.last_value = start, value
            sensor.closed_until = start + every

    def _fill(self, name: str, sensor: _Sensor, start: float, value: float) -> None:
        """Emit the intervals between the last one with readings and ``start``, per the policy."""
        every, policy = self.config.every, self.config.gap
        assert sensor.last_start is not None
        missing = round((start - sensor.last_start) / every) - 1
        if missing <= 0 or policy == "leave":
            return
        limit = self.config.gap_limit
        if (limit is not None and missing * every > limit + 1e-9) or missing > MAX_FILL:
            self.context.counters.incr("gap_too_long" if missing > MAX_FILL else "gap_left")
            return
        before = sensor.last_value
        for step in range(1, missing + 1):
            filled = before
            if policy == "interpolate":
                filled = before + (value - before) * step / (missing + 1)
            self._emit(name, sensor, sensor.last_start + step * every, filled, 0, policy)

    def _aggregate(self, acc: list[Any]) -> float:
        agg = self.config.agg
        if agg == "mean":
            return float(acc[_SUM] / acc[_N])
        if agg == "median":
            return float(acc[_SKETCH].quantiles([0.5], acc[_MIN], acc[_MAX])[0])
        if agg == "count":
            return float(acc[_N])
        index = {"first": _FIRST, "last": _LAST, "min": _MIN, "max": _MAX, "sum": _SUM}[agg]
        return float(acc[index])

    def _emit(
        self, name: str, sensor: _Sensor, start: float, value: float, count: int,
        filled: str | None = None,
    ) -> None:
        data: dict[str, Any] = {"sensor": name, "value": value}
        if sensor.unit is not None and self.config.agg != "count":
            data["unit"] = sensor.unit
        data["count"] = count
        if filled is not None:
            data["filled"] = filled
        self.context.emit(data, start)

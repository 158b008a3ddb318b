"""Tumbling windows by reading time, per sensor, with summary statistics."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field

from agent import Duration, Module, ModuleConfig, PositiveDuration, Record

Stat = Literal["count", "sum", "mean", "min", "max", "stddev", "first", "last"]

# An open window's accumulator, a list for speed: values are shifted by the first one, which
# keeps the sum of squares (and so the stddev) exact for large values with small spread.
_N, _SUM, _SQ, _MIN, _MAX, _FIRST, _LAST, _LAST_TS = range(8)


class WindowConfig(ModuleConfig):
    every: PositiveDuration = 60.0
    """Window length: "10s", "1m", "1h"."""
    stats: Annotated[list[Stat], Field(min_length=1)] = ["count", "mean", "min", "max"]
    lateness: Duration = 0.0
    """How far behind a sensor's newest reading a reading may be and still count."""
    timeout: Duration = 5.0
    """With no newer reading, a window closes this long after its end, by the clock."""


class Window(Module[WindowConfig]):
    """Summarises each sensor's readings over fixed, back-to-back windows of reading time.

    Emits one record per sensor and window with ``sensor``, ``start``, ``end``, ``count`` and
    each requested statistic by name. Windows with no readings emit nothing. A reading for a
    window already emitted is counted as ``late`` and left out.
    """

    Config = WindowConfig
    description = "Tumbling windows per sensor: count, sum, mean, min, max, stddev, first, last."

    def __init__(self, config: WindowConfig, context: Any) -> None:
        super().__init__(config, context)
        self._open: dict[str, dict[float, list[float]]] = {}
        self._newest: dict[str, float] = {}  # per sensor: newest reading time seen
        self._closed_until: dict[str, float] = {}  # per sensor: end of the last emitted window

    def process(self, record: Record) -> None:
        data = record.data
        value = data.get("value")
        if type(value) is not float and type(value) is not int or not math.isfinite(value):
            self.context.counters.incr("not_a_number")
            return
        sensor = data.get("sensor", record.topic)
        ts = record.ts
        every = self.config.every
        start = ts - ts % every
        if start < self._closed_until.get(sensor, -math.inf):
            self.context.counters.incr("late")
            return
        windows = self._open.get(sensor)
        if windows is None:
            windows = self._open[sensor] = {}
        acc = windows.get(start)
        if acc is None:
            windows[start] = [1, 0.0, 0.0, value, value, value, value, ts]
        else:
            shifted = value - acc[_FIRST]
            acc[_N] += 1
            acc[_SUM] += shifted
            acc[_SQ] += shifted * shifted
            if value < acc[_MIN]:
                acc[_MIN] = value
            elif value > acc[_MAX]:
                acc[_MAX] = value
            if ts >= acc[_LAST_TS]:
                acc[_LAST], acc[_LAST_TS] = value, ts
        newest = self._newest.get(sensor)
        if newest is None or ts > newest:
            self._newest[sensor] = ts
            if len(windows) > 1:
                self._close(sensor, ts - self.config.lateness)

    def tick(self, now: float) -> None:
        horizon = now - self.config.timeout - self.config.lateness
        for sensor in list(self._open):
            self._close(sensor, horizon)

    async def stop(self) -> None:
        for sensor in list(self._open):
            self._close(sensor, math.inf)

    def _close(self, sensor: str, watermark: float) -> None:
        """Emit, oldest first, every window of ``sensor`` that ends at or before ``watermark``."""
        windows = self._open[sensor]
        every = self.config.every
        for start in sorted(windows):
            end = start + every
            if end > watermark:
                break
            self.context.emit(self._summary(sensor, start, end, windows.pop(start)), ts=end)
            self._closed_until[sensor] = end
        if not windows:
            del self._open[sensor]

    def _summary(self, sensor: str, start: float, end: float, acc: list[float]) -> dict[str, Any]:
        count = int(acc[_N])
        summary: dict[str, Any] = {"sensor": sensor, "start": start, "end": end, "count": count}
        first = acc[_FIRST]
        for stat in self.config.stats:
            if stat == "count":
                continue
            if stat == "sum":
                summary[stat] = first * count + acc[_SUM]
            elif stat == "mean":
                summary[stat] = first + acc[_SUM] / count
            elif stat == "min":
                summary[stat] = acc[_MIN]
            elif stat == "max":
                summary[stat] = acc[_MAX]
            elif stat == "stddev":
                mean_shift = acc[_SUM] / count
                summary[stat] = math.sqrt(max(acc[_SQ] / count - mean_shift * mean_shift, 0.0))
            elif stat == "first":
                summary[stat] = first
            elif stat == "last":
                summary[stat] = acc[_LAST]
        return summary

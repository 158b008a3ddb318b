"""Tumbling and hopping windows by reading time, per sensor, with summary statistics."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from agent import Context, Duration, Module, ModuleConfig, PositiveDuration, Record
from modules._common import (
    CLOCK_RESET,
    ClockWatch,
    due_to_close,
    is_clock_reset,
    max_clock_skew,
    shift_arrivals,
)
from modules._quantiles import QuantileSketch, SketchShape

Stat = Literal[
    "count", "sum", "mean", "min", "max", "stddev", "first", "last", "p50", "p90", "p95", "p99"
]
QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
MAX_PANES = 1000

# An open pane's accumulator, a list for speed. Values are summed shifted by the pane's first
# value, which keeps the sum of squares (and so the stddev) exact for large values with a small
# spread. A window is its pane when tumbling, or the merge of its panes when hopping.
_N, _SUM, _SQ, _MIN, _MAX, _FIRST, _FIRST_TS, _LAST, _LAST_TS, _SHIFT, _SKETCH = range(11)


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


class WindowConfig(ModuleConfig):
    every: PositiveDuration = 60.0
    """Window length: "10s", "1m", "1h"."""
    hop: PositiveDuration | None = None
    """A window starts every ``hop`` (hopping windows overlap); unset, windows are back to back."""
    stats: Annotated[tuple[Stat, ...], Field(min_length=1)] = ("count", "mean", "min", "max")
    """Statistics to emit, each under its own name."""
    lateness: Duration = 0.0
    """How far behind a sensor's newest reading a reading may be and still count."""
    timeout: Duration = 5.0
    """With no newer reading, a sensor's windows close this long after their end, counting
    from the sensor's newest reading plus the time since it arrived."""
    quantile_accuracy: Annotated[float, Field(ge=0.0005, le=0.05)] = 0.01
    """Error bound of p50...p99 past 256 readings a window, as a fraction of the window's range."""
    max_sensors: Annotated[int, Field(ge=1)] = 100_000
    """Readings of further sensors are dropped and counted as ``too_many_sensors``."""

    @field_validator("stats")
    @classmethod
    def _unique(cls, stats: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({stat for stat in stats if stats.count(stat) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} asked for more than once")
        return stats

    @model_validator(mode="after")
    def _hop_fits(self) -> WindowConfig:
        if self.hop is None:
            return self
        if self.hop > self.every:
            raise ValueError(f"hop ({self.hop:g} s) must not be longer than every ({self.every:g} s)")
        pane = math.gcd(_micros(self.every), _micros(self.hop))
        if _micros(self.every) // pane > MAX_PANES:
            raise ValueError(
                f"every ({self.every:g} s) and hop ({self.hop:g} s) share no common step of at "
                f"least every/{MAX_PANES}: pick a hop that divides every more evenly"
            )
        return self


class _Sensor:
    """What a window module keeps per sensor."""

    __slots__ = ("arrived", "closed_until", "cur", "cur_start", "newest", "next_close", "panes", "unit")

    def __init__(self) -> None:
        self.panes: dict[float, list[Any]] = {}
        self.cur_start = -math.inf  # the pane the last reading went to, and its accumulator
        self.cur: list[Any] = []
        self.newest = -math.inf  # newest reading time
        self.arrived = -math.inf  # clock time when the newest reading arrived
        self.closed_until = -math.inf  # end of the last emitted window
        self.next_close = math.inf  # end of the earliest window still open
        self.unit: str | None = None  # of the sensor's readings, as a pane's first one gave it


class Window(Module[WindowConfig]):
    """Summarises each sensor's readings over windows of reading time.

    Emits one record per sensor and window, at the window's end, with ``sensor``, ``start``,
    ``end``, ``count`` and each requested statistic by name; windows with no readings emit
    nothing. A window closes when a reading of the same sensor arrives past its end plus
    ``lateness``, or ``timeout`` after that when the sensor goes quiet, or at ``stop``. A reading
    whose window has closed, or is due to (it ends at or before the sensor's newest reading time
    minus ``lateness``), is counted as ``late`` and left out; unless it is far behind (more than
    the agent's ``max_clock_skew``) or the sensor's newest time was ahead of the clock: then the
    sensor's clock was reset, its open windows close and it starts again from the new time
    (counted as ``clock_reset``). A sensor's newest time never runs ahead of the clock by more
    than ``max_clock_skew``. Readings whose value is not
    a number are counted as ``not_a_number``, NaN and infinities as ``not_finite``. A summary
    carries ``unit`` when the sensor's readings have one (looked at on a pane's first reading, not
    on every one), but not one of ``count`` alone (as ``resample`` with ``agg = "count"``).
    """

    Config = WindowConfig
    description = "Tumbling or hopping windows per sensor: count, mean, min, max, stddev, first, " \
        "last, p50...p99."

    def __init__(self, config: WindowConfig, context: Context) -> None:
        super().__init__(config, context)
        every = config.every
        hop = config.hop if config.hop is not None else every
        self._every = every
        self._hop = hop
        pane = math.gcd(_micros(every), _micros(hop))
        self._pane = pane / 1_000_000
        self._every_panes = _micros(every) // pane
        self._hop_panes = _micros(hop) // pane
        self._tumbling = self._every_panes == 1
        self._quantiles = [stat for stat in config.stats if stat in QUANTILES]
        self._shape = SketchShape(config.quantile_accuracy) if self._quantiles else None
        self._sensors: dict[str, _Sensor] = {}
        self._counters = context.counters
        self._clock = ClockWatch()
        self._skew = max_clock_skew(context)
        self._dirty: set[str] = set()  # sensors changed since the last checkpoint
        self._fingerprint = config.model_dump_json()
        self._checkpointed = False

    def process(self, record: Record) -> None:
        self.process_batch((record,))

    def process_batch(self, records: Iterable[Record]) -> None:
        now = self.context.clock()
        self._clock_jumped(now)
        sensors = self._sensors
        pane = self._pane
        lateness = self.config.lateness
        shape = self._shape
        limit = now + self._skew  # a watermark never runs ahead of the clock by more
        dirty = self._dirty
        for record in records:
            data = record[2]
            value: Any = data.get("value")  # checked just below, without isinstance (hot path)
            kind = type(value)
            if kind is not float:
                if kind is not int:  # bool, str, None, ...: type(True) is bool, not int
                    self._counters.incr("not_a_number")
                    continue
                value = float(value)
            if value - value != 0.0:  # NaN or an infinity
                self._counters.incr("not_finite")
                continue
            ts = record[1]
            sensor = data.get("sensor") or record[0]
            dirty.add(sensor)
            state = sensors.get(sensor)
            if state is None:
                state = self._new_sensor(sensor)
                if state is None:
                    continue
            start = ts // pane * pane  # the same float for the same pane, always
            if start == state.cur_start:
                acc = state.cur
                shifted = value - acc[_SHIFT]
                acc[_N] += 1
                acc[_SUM] += shifted
                acc[_SQ] += shifted * shifted
                if value < acc[_MIN]:
                    acc[_MIN] = value
                elif value > acc[_MAX]:
                    acc[_MAX] = value
                if ts >= acc[_LAST_TS]:
                    acc[_LAST], acc[_LAST_TS] = value, ts
                elif ts < acc[_FIRST_TS]:
                    acc[_FIRST], acc[_FIRST_TS] = value, ts
                if shape is not None:
                    acc[_SKETCH].add(value)
            else:
                state = self._add_to_other_pane(sensor, state, start, value, ts, now)
                if state is None:
                    continue
                unit = data.get("unit")  # once a pane: on every reading it costs 3.5 %
                if type(unit) is str:
                    state.unit = unit
            if ts > state.newest:
                mark = ts if ts <= limit else limit
                if mark > state.newest:
                    state.newest = mark
                    state.arrived = now
                    if mark - lateness >= state.next_close:
                        self._close(sensor, state, mark - lateness)
            elif ts == state.newest:
                state.arrived = now

    def tick(self, now: float) -> None:
        self._clock_jumped(now)
        wait = self.config.timeout + self.config.lateness
        for sensor, state, watermark in due_to_close(self._sensors, now, wait):
            self._close(sensor, state, watermark)

    async def stop(self) -> None:
        for sensor, state in list(self._sensors.items()):
            if state.panes:
                self._close(sensor, state, math.inf)

    def checkpoint(self) -> dict[str, Any] | None:
        saved: dict[str, Any] = {}
        if not self._checkpointed:
            saved[_CONFIG_KEY] = self._fingerprint
            self._checkpointed = True
        sensors = self._sensors
        for sensor in self._dirty:
            state = sensors.get(sensor)
            saved[sensor] = None if state is None else _dump_sensor(state)
        self._dirty = set()
        return saved

    def restore(self, saved: Mapping[str, Any]) -> None:
        if saved.get(_CONFIG_KEY) != self._fingerprint:
            self.context.log.warning("the saved windows were made with another config; not restored")
            self._dirty.update(key for key in saved if key != _CONFIG_KEY)  # forgotten next time
            return
        now = self.context.clock()
        for sensor, value in saved.items():
            if sensor != _CONFIG_KEY and value is not None:
                # Time spent down is not the sensor going quiet: its windows close by timeout
                # counting from now, after what the broker kept for us has come in.
                self._sensors[sensor] = _load_sensor(value, self._shape, now)
        self._checkpointed = True

    def _clock_jumped(self, now: float) -> None:
        if jump := self._clock.jump(now):
            shift_arrivals(self._sensors.values(), jump)

    # -- panes and windows -----------------------------------------------------------------

    def _new_sensor(self, sensor: str) -> _Sensor | None:
        if len(self._sensors) >= self.config.max_sensors:
            self._counters.incr("too_many_sensors")
            return None
        state = self._sensors[sensor] = _Sensor()
        return state

    def _add_to_other_pane(
        self, sensor: str, state: _Sensor, start: float, value: float, ts: float, now: float
    ) -> _Sensor | None:
        """The slow path: a reading for another pane than the last one. None if late: its
        first window was emitted, or would have been by now (it ends at or before the sensor's
        newest reading time minus ``lateness``). The sensor's state, new after a clock reset."""
        acc = state.panes.get(start)
        if acc is None and (
            start < state.closed_until
            or self._first_window_end(start) <= state.newest - self.config.lateness
        ):
            if not is_clock_reset(ts, state.newest, now, max(self._skew, self.config.lateness)):
                self._counters.incr("late")
                return None
            state = self._reset(sensor, state)
        if acc is None:
            sketch = None
            if self._shape is not None:
                sketch = QuantileSketch(self._shape, None if self._tumbling else self._ref(state))
                sketch.add(value)
            state.panes[start] = [1, 0.0, 0.0, value, value, value, ts, value, ts, value, sketch]
            state.next_close = min(state.next_close, self._first_window_end(start))
        else:
            acc[_N] += 1
            shifted = value - acc[_SHIFT]
            acc[_SUM] += shifted
            acc[_SQ] += shifted * shifted
            acc[_MIN] = min(acc[_MIN], value)
            acc[_MAX] = max(acc[_MAX], value)
            if ts >= acc[_LAST_TS]:
                acc[_LAST], acc[_LAST_TS] = value, ts
            elif ts < acc[_FIRST_TS]:
                acc[_FIRST], acc[_FIRST_TS] = value, ts
            if acc[_SKETCH] is not None:
                acc[_SKETCH].add(value)
        state.cur_start, state.cur = start, state.panes[start]
        return state

    def _reset(self, sensor: str, state: _Sensor) -> _Sensor:
        """The sensor's clock started a new time line: emit what is open, start afresh."""
        self._counters.incr(CLOCK_RESET)
        if state.panes:
            self._close(sensor, state, math.inf)
        fresh = self._sensors[sensor] = _Sensor()
        fresh.unit = state.unit
        return fresh

    @staticmethod
    def _ref(state: _Sensor) -> float | None:
        """The reference of the sensor's open pane sketches, so that panes merge exactly."""
        for acc in state.panes.values():
            if acc[_SKETCH] is not None and acc[_SKETCH].ref is not None:
                ref: float = acc[_SKETCH].ref
                return ref
        return None

    def _first_window_end(self, pane_start: float) -> float:
        """The end of the earliest window that holds the pane starting at ``pane_start``."""
        index = round(pane_start / self._pane)
        hop, every = self._hop_panes, self._every_panes
        first = -((every - index - 1) // hop)  # ceil((index + 1 - every) / hop)
        return (first * hop + every) * self._pane

    def _close(self, sensor: str, state: _Sensor, watermark: float) -> None:
        """Emit, oldest first, every window of ``sensor`` that ends at or before ``watermark``."""
        self._dirty.add(sensor)
        if self._tumbling:
            self._close_tumbling(sensor, state, watermark)
        else:
            self._close_hopping(sensor, state, watermark)
        state.cur_start, state.cur = -math.inf, []
        if not state.panes:
            state.next_close = math.inf

    def _close_tumbling(self, sensor: str, state: _Sensor, watermark: float) -> None:
        panes, pane = state.panes, self._pane
        for start in sorted(panes):
            end = (round(start / pane) + 1) * pane  # exactly the next window's start
            if end > watermark:
                state.next_close = end
                return
            self.context.emit(self._summary(sensor, state.unit, start, end, panes.pop(start)), ts=end)
            state.closed_until = end

    def _close_hopping(self, sensor: str, state: _Sensor, watermark: float) -> None:
        """Windows are ``every`` panes long and start every ``hop`` panes; all the arithmetic is
        on pane numbers, so window bounds and pane starts compare exactly."""
        panes, pane = state.panes, self._pane
        hop, every = self._hop_panes, self._every_panes
        while panes:
            end = round(self._first_window_end(min(panes)) / pane)
            if state.closed_until > -math.inf:
                closed = round(state.closed_until / pane)
                end = max(end, closed + hop)  # windows up to `closed` are out already
            if end * pane > watermark:
                state.next_close = end * pane
                return
            start, end_ts = (end - every) * pane, end * pane
            inside = [panes[key] for key in sorted(panes) if start <= key < end_ts]
            if inside:
                summary = self._summary(sensor, state.unit, start, end_ts, _merged(inside))
                self.context.emit(summary, ts=end_ts)
            state.closed_until = end_ts
            keep_from = (end - every + hop) * pane  # later windows start here or after
            for key in [key for key in panes if key < keep_from]:
                del panes[key]

    def _summary(
        self, sensor: str, unit: str | None, start: float, end: float, acc: list[Any]
    ) -> dict[str, Any]:
        count = acc[_N]
        summary: dict[str, Any] = {"sensor": sensor, "start": start, "end": end, "count": count}
        shift = acc[_SHIFT]
        mean_shifted = acc[_SUM] / count
        quantiles: dict[str, float] = {}
        if self._quantiles:
            values = acc[_SKETCH].quantiles(
                [QUANTILES[name] for name in self._quantiles], acc[_MIN], acc[_MAX]
            )
            quantiles = dict(zip(self._quantiles, values, strict=True))
        for stat in self.config.stats:
            if stat == "count":
                continue
            if stat == "sum":
                summary[stat] = shift * count + acc[_SUM]
            elif stat == "mean":
                summary[stat] = shift + mean_shifted
            elif stat == "min":
                summary[stat] = acc[_MIN]
            elif stat == "max":
                summary[stat] = acc[_MAX]
            elif stat == "stddev":
                summary[stat] = math.sqrt(max(acc[_SQ] / count - mean_shifted * mean_shifted, 0.0))
            elif stat == "first":
                summary[stat] = acc[_FIRST]
            elif stat == "last":
                summary[stat] = acc[_LAST]
            else:
                summary[stat] = quantiles[stat]
        if unit is not None and len(summary) > 4:  # a count alone has no unit
            summary["unit"] = unit
        return summary


_CONFIG_KEY = "~config"  # not a sensor id a broker topic can give ("~" is not in the prefix)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _dump_sensor(state: _Sensor) -> list[Any]:
    panes = [
        [start, *acc[:_SKETCH], None if acc[_SKETCH] is None else acc[_SKETCH].dump()]
        for start, acc in state.panes.items()
    ]
    marks = [_finite(state.newest), _finite(state.closed_until), _finite(state.next_close)]
    return [marks, panes, state.unit]


def _load_sensor(saved: list[Any], shape: SketchShape | None, now: float) -> _Sensor:
    (newest, closed_until, next_close), panes, *unit = saved  # older checkpoints keep no unit
    state = _Sensor()
    state.unit = unit[0] if unit else None
    state.newest = -math.inf if newest is None else newest
    state.closed_until = -math.inf if closed_until is None else closed_until
    state.next_close = math.inf if next_close is None else next_close
    state.arrived = now
    for start, *acc in panes:
        sketch = acc[_SKETCH]
        if sketch is not None and shape is not None:
            acc[_SKETCH] = QuantileSketch.load(shape, sketch)
        state.panes[start] = acc
    return state


def _merged(accs: list[list[Any]]) -> list[Any]:
    """One accumulator for several panes, shifted by the first pane's shift."""
    if len(accs) == 1:
        return accs[0]
    first = accs[0]
    out = list(first)
    sketch = first[_SKETCH]
    if sketch is not None:
        out[_SKETCH] = copy = QuantileSketch(sketch.shape, sketch.ref)
        copy.merge(sketch)
    shift = out[_SHIFT]
    for acc in accs[1:]:
        n, delta = acc[_N], acc[_SHIFT] - shift
        out[_SQ] += acc[_SQ] + 2 * delta * acc[_SUM] + n * delta * delta
        out[_SUM] += acc[_SUM] + n * delta
        out[_N] += n
        out[_MIN] = min(out[_MIN], acc[_MIN])
        out[_MAX] = max(out[_MAX], acc[_MAX])
        if acc[_FIRST_TS] < out[_FIRST_TS]:
            out[_FIRST], out[_FIRST_TS] = acc[_FIRST], acc[_FIRST_TS]
        if acc[_LAST_TS] >= out[_LAST_TS]:
            out[_LAST], out[_LAST_TS] = acc[_LAST], acc[_LAST_TS]
        if sketch is not None:
            out[_SKETCH].merge(acc[_SKETCH])
    return out

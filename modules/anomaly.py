"""Online anomaly detectors with bounded memory per sensor: z-score over an EWMA, a robust
spike detector (median and MAD), a stuck-sensor detector and a gap detector."""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from agent import Context, Module, ModuleConfig, PositiveDuration, Record
from modules._common import (
    OUT_OF_ORDER,
    TOO_MANY_SENSORS,
    ClockWatch,
    numeric_readings,
    shift_arrivals,
)

SCORE_CAP = 1e9
"""Scores are capped here, to stay finite over a tiny spread."""
DetectorName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class ZScore(ModuleConfig):
    """How far a reading is from the exponentially weighted mean, in weighted standard
    deviations."""

    type: Literal["zscore"]
    name: DetectorName | None = None
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Weight of the newest reading in the mean and variance (0.05: about the last 40)."""
    threshold: Annotated[float, Field(gt=0)] = 4.0
    warm_up: Annotated[int, Field(ge=2)] = 30
    """Readings seen before the detector scores any."""
    min_spread: Annotated[float, Field(ge=0)] = 0.0
    """A floor for the standard deviation, in the sensor's unit. With no spread at all (a flat
    history) nothing is scored unless this is set."""


class Spike(ModuleConfig):
    """How far a reading is from the median of the last ``window`` readings, in robust standard
    deviations (1.4826 x the median absolute deviation): insensitive to the spikes it finds."""

    type: Literal["spike"]
    name: DetectorName | None = None
    window: Annotated[int, Field(ge=5, le=1001)] = 31
    threshold: Annotated[float, Field(gt=0)] = 5.0
    min_spread: Annotated[float, Field(ge=0)] = 0.0
    """A floor for the robust standard deviation, in the sensor's unit. With no spread at all
    (a flat window) nothing is scored unless this is set."""


class Flatline(ModuleConfig):
    """A stuck sensor: its value has not moved by more than ``tolerance`` for ``duration``."""

    type: Literal["flatline"]
    name: DetectorName | None = None
    duration: PositiveDuration = 600.0
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    min_readings: Annotated[int, Field(ge=2)] = 3


class Gap(ModuleConfig):
    """A silent sensor: nothing from it for longer than ``max_silence``."""

    type: Literal["gap"]
    name: DetectorName | None = None
    max_silence: PositiveDuration


Detector = Annotated[ZScore | Spike | Flatline | Gap, Field(discriminator="type")]


class AnomalyConfig(ModuleConfig):
    detectors: Annotated[list[Detector], Field(min_length=1)]
    max_sensors: Annotated[int, Field(ge=1)] = 100_000
    """Readings of further sensors are dropped and counted as ``too_many_sensors``."""

    @field_validator("detectors")
    @classmethod
    def _names_unique(cls, detectors: list[Any]) -> list[Any]:
        if sum(d.type == "gap" for d in detectors) > 1:
            raise ValueError("one gap detector is enough: it watches every sensor")
        names = [d.name or d.type for d in detectors]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"detector names must be unique: {', '.join(repeated)} used twice "
                "(give each detector of the same type a name)"
            )
        return detectors


class _Sensor:
    __slots__ = ("arrived", "ewma", "flat", "gap_raised", "newest", "recent", "recent_sorted")

    def __init__(self, zscores: int, spike_window: int, flatlines: int) -> None:
        self.newest = -math.inf
        self.arrived = -math.inf
        # per zscore detector: readings seen, mean, variance
        self.ewma: list[list[float]] = [[0, 0.0, 0.0] for _ in range(zscores)]
        self.recent: deque[float] = deque(maxlen=spike_window)  # shared by spike detectors
        self.recent_sorted: list[float] = []
        # per flatline detector: run start ts, run value, readings in the run, raised
        self.flat: list[list[Any]] = [[] for _ in range(flatlines)]
        self.gap_raised = False


class Anomaly(Module[AnomalyConfig]):
    """Runs each detector on every reading of every sensor and emits events with ``detector``
    (its name), ``type``, ``sensor``, ``score`` and ``event``: ``anomaly`` for a point (zscore,
    spike, with ``value``, ``threshold`` and ``expected``), ``raised`` and ``cleared`` for a
    condition that lasts (flatline, gap).

    Memory per sensor is fixed: three numbers for zscore, ``window`` values for spike. A reading
    older than the sensor's newest is counted as ``out_of_order`` and skipped. Gap silences are
    measured by the clock from each sensor's last arrival; a clock jump restarts them.
    """

    Config = AnomalyConfig
    description = "Online anomaly detectors: EWMA z-score, median/MAD spikes, flatline, gaps."

    def __init__(self, config: AnomalyConfig, context: Context) -> None:
        super().__init__(config, context)
        self._zscore = [d for d in config.detectors if isinstance(d, ZScore)]
        self._spikes = [d for d in config.detectors if isinstance(d, Spike)]
        self._flat = [d for d in config.detectors if isinstance(d, Flatline)]
        self._gap = next((d for d in config.detectors if isinstance(d, Gap)), None)
        self._window = max((d.window for d in self._spikes), default=1)
        self._sensors: dict[str, _Sensor] = {}
        self._clock = ClockWatch()

    async def start(self) -> None:
        if self._gap is None:
            return
        now = self.context.clock()
        for name, (newest, raised) in self.context.state.get("gap", {}).items():
            sensor = self._sensors[name] = self._new_sensor()
            sensor.newest, sensor.gap_raised = newest, raised
            sensor.arrived = now  # give every known sensor a full silence from the restart

    def process(self, record: Record) -> None:
        self.process_batch((record,))

    def process_batch(self, records: Iterable[Record]) -> None:
        now = self.context.clock()
        self._clock_jumped(now)
        counters = self.context.counters
        for record, value, name in numeric_readings(records, counters):
            sensor = self._sensors.get(name)
            if sensor is None:
                if len(self._sensors) >= self.config.max_sensors:
                    counters.incr(TOO_MANY_SENSORS)
                    continue
                sensor = self._sensors[name] = self._new_sensor()
            ts = record.ts
            if ts < sensor.newest:
                counters.incr(OUT_OF_ORDER)
                continue
            if self._gap is not None:
                self._gap_ended(name, sensor, ts)
            sensor.newest, sensor.arrived = ts, now
            for zscore, stats in zip(self._zscore, sensor.ewma, strict=True):
                self._score_zscore(zscore, stats, name, value, ts)
            if self._spikes:
                self._score_spikes(name, sensor, value, ts)
            for index, flat in enumerate(self._flat):
                self._check_flat(flat, index, name, sensor, value, ts)

    def _new_sensor(self) -> _Sensor:
        return _Sensor(len(self._zscore), self._window, len(self._flat))

    def tick(self, now: float) -> None:
        gap = self._gap
        if gap is None:
            return
        self._clock_jumped(now)
        for name, sensor in self._sensors.items():
            silence = now - sensor.arrived
            if not sensor.gap_raised and silence > gap.max_silence:
                sensor.gap_raised = True
                self._emit(gap, "raised", name, None, silence, ts=now, last_seen=sensor.newest)
        self.context.state["gap"] = {
            name: [sensor.newest, sensor.gap_raised] for name, sensor in self._sensors.items()
        }

    def _clock_jumped(self, now: float) -> None:
        jump = self._clock.jump(now)
        if jump and self._gap is not None:
            shift_arrivals(self._sensors.values(), jump)
            self.context.log.info("the clock jumped by %.0f s; gap silences restart", jump)

    # -- detectors -------------------------------------------------------------------------

    def _score_zscore(
        self, d: ZScore, stats: list[float], name: str, value: float, ts: float
    ) -> None:
        seen, mean, var = stats
        if seen >= d.warm_up:
            score = _score(abs(value - mean), max(math.sqrt(var), d.min_spread))
            if score >= d.threshold:
                self._emit(d, "anomaly", name, value, score, ts=ts, threshold=d.threshold,
                           expected=mean)
        if seen == 0:
            stats[:] = [1, value, 0.0]
            return
        delta = value - mean
        stats[0] = seen + 1
        stats[1] = mean + d.alpha * delta
        stats[2] = (1 - d.alpha) * (var + d.alpha * delta * delta)

    def _score_spikes(self, name: str, sensor: _Sensor, value: float, ts: float) -> None:
        recent, ordered = sensor.recent, sensor.recent_sorted
        for d in self._spikes:
            if len(recent) >= d.window:
                window = ordered if d.window == len(ordered) else sorted(list(recent)[-d.window:])
                median = window[len(window) // 2]
                mad = sorted(abs(x - median) for x in window)[len(window) // 2]
                score = _score(abs(value - median), max(1.4826 * mad, d.min_spread))
                if score >= d.threshold:
                    self._emit(d, "anomaly", name, value, score, ts=ts, threshold=d.threshold,
                               expected=median)
        if len(recent) == recent.maxlen:
            del ordered[bisect_left(ordered, recent[0])]
        recent.append(value)
        insort(ordered, value)

    def _check_flat(
        self, d: Flatline, index: int, name: str, sensor: _Sensor, value: float, ts: float
    ) -> None:
        run = sensor.flat[index]
        if run and abs(value - run[1]) <= d.tolerance:
            run[2] += 1
            stuck = ts - run[0]
            if not run[3] and stuck >= d.duration and run[2] >= d.min_readings:
                run[3] = True
                self._emit(d, "raised", name, value, stuck, ts=ts, since=run[0])
            return
        if run and run[3]:
            self._emit(d, "cleared", name, value, ts - run[0], ts=ts, since=run[0])
        sensor.flat[index] = [ts, value, 1, False]

    def _gap_ended(self, name: str, sensor: _Sensor, ts: float) -> None:
        gap = self._gap
        assert gap is not None
        if sensor.newest == -math.inf:
            return
        silence = ts - sensor.newest
        if not sensor.gap_raised and silence > gap.max_silence:
            # Seen only now, from reading times (a backlog, a replay): raise and clear at once.
            self._emit(gap, "raised", name, None, silence, ts=sensor.newest + gap.max_silence,
                       last_seen=sensor.newest)
            sensor.gap_raised = True
        if sensor.gap_raised:
            sensor.gap_raised = False
            self._emit(gap, "cleared", name, None, max(silence, 0.0), ts=ts,
                       last_seen=sensor.newest)

    def _emit(
        self, d: Any, event: str, sensor: str, value: float | None, score: float, ts: float,
        **extra: Any,
    ) -> None:
        data: dict[str, Any] = {
            "event": event, "detector": d.name or d.type, "type": d.type, "sensor": sensor,
            "score": score,
        }
        if value is not None:
            data["value"] = value
        data.update(extra)
        self.context.emit(data, ts)


def _score(distance: float, spread: float) -> float:
    """Distance in spreads. A spread of 0 (a perfectly flat history) gives no scale, hence no
    score: otherwise a quantised sensor stepping by one count would be an anomaly each time.
    Set ``min_spread`` to score changes out of a flat history."""
    if spread > 0:
        return min(distance / spread, SCORE_CAP)
    return 0.0

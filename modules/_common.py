"""Small pieces the built-in modules share: reading a value, naming a sensor, picking sensors."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Protocol, TypeVar

from pydantic import AfterValidator, Field

from agent import Counters, Record

NOT_A_NUMBER = "not_a_number"
"""Counter: the record's ``value`` is missing or not a number (a string, a bool, null...)."""
NOT_FINITE = "not_finite"
"""Counter: the value is NaN or an infinity."""
OUT_OF_ORDER = "out_of_order"
"""Counter: the reading is older than one already seen from the same sensor."""
TOO_MANY_SENSORS = "too_many_sensors"
"""Counter: a reading from a new sensor beyond the module's ``max_sensors``."""
CLOCK_RESET = "clock_reset"
"""Counter: a sensor's time went back by more than ``max_clock_skew``, or its newest reading
time was ahead of the clock and a reading of the corrected time came: its open windows are
closed and it starts again from the new time."""
MAX_CLOCK_SKEW = 86400.0
"""How far a reading time may be ahead of the clock, unless the agent's ``max_clock_skew`` says."""
CLOCK_JUMP = 60.0
"""The clock moving more than this between two looks (ticks come every second or so), or
backwards, is a jump: NTP setting the clock of a board with no RTC, a suspended process."""


class ClockWatch:
    """Tells a clock jump from time passing. Modules that measure silences by the clock (how
    long since a sensor's last reading) shift their marks by the jump, so a jump neither closes
    windows early nor raises false gaps."""

    def __init__(self, limit: float = CLOCK_JUMP) -> None:
        self._limit = limit
        self._last: float | None = None

    def jump(self, now: float) -> float:
        """How far the clock jumped since the last call: 0.0 when it just moved on."""
        last, self._last = self._last, now
        if last is None or 0.0 <= now - last <= self._limit:
            return 0.0
        return now - last


def max_clock_skew(context: object) -> float:
    """The agent's ``max_clock_skew`` as the context carries it (a harness may not)."""
    skew = getattr(context, "max_clock_skew", None)
    return float(skew) if isinstance(skew, int | float) else MAX_CLOCK_SKEW


def is_clock_reset(ts: float, newest: float, now: float, skew: float) -> bool:
    """A reading behind its sensor's newest that is not late but a new time line: far behind
    (more than ``skew``), or the newest came from a clock running ahead of ours (the gateway's
    own clock before a correction, or the sensor's) by more than a clock jump."""
    return ts < newest - skew or newest > now + CLOCK_JUMP


class Arrival(Protocol):
    arrived: float
    """The clock time when the sensor's newest reading arrived."""


class Arrivals(Arrival, Protocol):
    """Per-sensor marks a module that closes windows by reading time keeps."""

    newest: float
    """The newest reading time seen from the sensor."""
    next_close: float
    """The end of the earliest window still open."""


S = TypeVar("S", bound=Arrivals)


def due_to_close(sensors: Mapping[str, S], now: float, wait: float) -> list[tuple[str, S, float]]:
    """The sensors with a window due by ``now``, each with the watermark to close up to: the
    sensor's own time, moved on by the clock time since its newest reading arrived (right for
    live readings and for a backlog of old ones alike), less ``wait``."""
    due = []
    for name, sensor in sensors.items():
        watermark = sensor.newest + max(0.0, now - sensor.arrived) - wait
        if watermark >= sensor.next_close:
            due.append((name, sensor, watermark))
    return due


def shift_arrivals(sensors: Iterable[Arrival], jump: float) -> None:
    """Move every arrival mark by a clock jump, so the jump reads as no time passing."""
    for sensor in sensors:
        sensor.arrived += jump


def value_of(record: Record, counters: Counters) -> float | None:
    """The record's ``value`` as a finite float, or None after counting why it is not one."""
    value: Any = record.data.get("value")
    kind = type(value)
    if kind is not float and kind is not int:  # type(True) is bool: not a reading
        counters.incr(NOT_A_NUMBER)
        return None
    if not math.isfinite(value):
        counters.incr(NOT_FINITE)
        return None
    return float(value)


def numeric_readings(records: Iterable[Record], counters: Counters) -> Iterator[tuple[Record, Any, str]]:
    """``(record, value, sensor)`` for each record whose ``value`` is a finite number (an int or
    a float, as it came), counting the others as ``value_of`` does; the sensor is the record's
    ``sensor`` field, else its topic. The batch loop of the modules that check every reading."""
    incr = counters.incr
    for record in records:
        data = record.data
        value: Any = data.get("value")  # checked just below, without isinstance (hot path)
        kind = type(value)
        if kind is not float and kind is not int:  # type(True) is bool: not a reading
            incr(NOT_A_NUMBER)
            continue
        if value - value != 0:  # NaN or an infinity
            incr(NOT_FINITE)
            continue
        yield record, value, data.get("sensor") or record.topic


def sensor_of(record: Record) -> str:
    """The sensor a record is about: its ``sensor`` field, else its topic."""
    sensor = record.data.get("sensor")
    return sensor if type(sensor) is str and sensor else record.topic


def _check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in patterns:
        if not pattern:
            raise ValueError("a sensor pattern cannot be empty")
    return patterns


SensorPatterns = Annotated[tuple[str, ...], Field(min_length=1), AfterValidator(_check_patterns)]
"""Sensor ids or shell-style patterns: ``"t1"``, ``"boiler-*"``, ``"line?/temp"``."""


class SensorSelector:
    """Which sensors a list of patterns picks, remembered per sensor (ids repeat a lot)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._everything = "*" in patterns
        self._regex = re.compile("|".join(fnmatch.translate(p) for p in patterns))
        self._cache: dict[str, bool] = {}

    def __call__(self, sensor: str) -> bool:
        if self._everything:
            return True
        hit = self._cache.get(sensor)
        if hit is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            hit = self._cache[sensor] = self._regex.match(sensor) is not None
        return hit

"""The simulated sensors of one run, and the payload each of them sends in each slot."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from simulators.payloads import MalformedDraw, reading
from simulators.signals import DAY, KINDS, NO_FAULTS, Faults, Sensor


@dataclass(frozen=True)
class SensorOptions:
    """What to simulate; ``rate`` is readings per second for each sensor."""

    host: str = "127.0.0.1"
    port: int = 1883
    sensors: int = 10
    rate: float = 1.0
    duration: float = 60.0
    qos: int = 1
    seed: int | None = None
    malformed: float = 0.0
    prefix: str = "sensors/"
    kinds: Sequence[str] = tuple(KINDS)
    faults: bool = True
    time_scale: float = 1.0
    window: int = 1000
    processes: int = 1

    def __post_init__(self) -> None:
        if self.sensors < 1:
            raise ValueError("--sensors must be at least 1")
        if self.rate <= 0 or self.duration <= 0:
            raise ValueError("--rate and --duration must be > 0")
        if not 0.0 <= self.malformed <= 1.0:
            raise ValueError("--malformed is a share between 0 and 1")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"unknown sensor kinds {unknown}; known: {', '.join(KINDS)}")
        if not 1 <= self.processes <= self.sensors:
            raise ValueError("--processes must be between 1 and the number of sensors")


class SensorSet:
    """The sensors whose index ``i`` has ``i % parts == part`` (all of them by default).

    Slot ``s`` of this set belongs to its sensor ``s % n`` and is that sensor's reading number
    ``s // n``. What a reading carries depends only on the seed, the sensor id and the reading
    number, so splitting the sensors over processes changes nothing that is sent.
    """

    def __init__(self, options: SensorOptions, seed: int, part: int = 0, parts: int = 1) -> None:
        self.options = options
        width = max(3, len(str(options.sensors - 1)))
        layout = random.Random(f"{seed}:layout")
        stuck = layout.randrange(options.sensors) if options.faults else -1
        day_phase = layout.uniform(0, DAY)  # where in the simulated day the run starts
        faults = Faults() if options.faults else NO_FAULTS
        self.sensors: list[Sensor] = []
        self._malformed: list[MalformedDraw] = []
        for index in range(part, options.sensors, parts):
            kind = KINDS[options.kinds[index % len(options.kinds)]]
            sensor_id = f"{kind.prefix}-{index:0{width}d}"
            self.sensors.append(Sensor(sensor_id, kind, seed, faults, stuck=index == stuck,
                                       time_scale=options.time_scale, day_phase=day_phase))
            self._malformed.append(MalformedDraw(seed, sensor_id, options.malformed))
        self.topics = [f"{options.prefix}{sensor.id}" for sensor in self.sensors]

    def slot(self, number: int, now: float) -> tuple[int, bytes, str | None] | None:
        """``(sensor position, payload, malformed reason or None)``; None during a dropout."""
        count = len(self.sensors)
        position, step = number % count, number // count
        sensor = self.sensors[position]
        value = sensor.reading(step / self.options.rate)
        broken = self._malformed[position].draw()
        if value is None:
            return None
        if broken is not None:
            reason, build = broken
            return position, build(value, now, sensor.kind.unit), reason
        return position, reading(value, now, sensor.kind.unit), None

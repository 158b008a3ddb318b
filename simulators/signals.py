"""What each kind of simulated sensor measures, and one sensor's signal over time.

A value is a sum of parts, each drawn per sensor from its own seeded generator so that a
sensor's stream depends only on the seed and its id, never on how many other sensors run:

    base + daily cycle + slow drift + load cycle + noise + (rarely) a spike

Faults come on top: a *stuck* sensor repeats its last value for a while; a sensor in a
*dropout* sends nothing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from simulators.episodes import Episodes

DAY = 86_400.0


@dataclass(frozen=True)
class Kind:
    """The shape of one kind of signal; ranges are drawn once per sensor."""

    name: str
    prefix: str  # sensor ids are ``<prefix>-<index>``
    unit: str
    base: tuple[float, float]
    daily: float  # amplitude of the daily cycle, peaking mid-afternoon (negative: at dawn)
    noise: float  # standard deviation of the white noise
    drift_per_hour: float  # standard deviation of a sensor's linear drift rate
    spike: float  # typical size of a spike
    cycle: float = 0.0  # amplitude of a load or weather cycle
    cycle_period: tuple[float, float] = (60.0, 60.0)
    cycle_shape: Literal["sine", "square"] = "sine"
    low: float = -math.inf
    high: float = math.inf
    decimals: int = 2


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("temperature", "temp", "C", (18.0, 26.0), daily=4.0, noise=0.08,
             drift_per_hour=0.05, spike=9.0, low=-40.0, high=85.0),
        Kind("humidity", "hum", "%", (40.0, 60.0), daily=-10.0, noise=0.4,
             drift_per_hour=0.2, spike=25.0, low=0.0, high=100.0, decimals=1),
        # RMS velocity of a machine whose load swings over a few seconds.
        Kind("vibration", "vib", "mm/s", (1.0, 3.5), daily=0.0, noise=0.15,
             drift_per_hour=0.02, spike=8.0, cycle=0.6, cycle_period=(3.0, 9.0), low=0.0,
             decimals=3),
        # A compressor-like load switching on and off every few minutes.
        Kind("power", "power", "W", (80.0, 250.0), daily=60.0, noise=4.0,
             drift_per_hour=1.0, spike=1500.0, cycle=900.0, cycle_period=(120.0, 600.0),
             cycle_shape="square", low=0.0, decimals=1),
        # Weather: fronts pass over days.
        Kind("pressure", "press", "hPa", (1005.0, 1022.0), daily=0.6, noise=0.05,
             drift_per_hour=0.01, spike=12.0, cycle=8.0, cycle_period=(1.5 * DAY, 4 * DAY)),
    )
}


@dataclass(frozen=True)
class Faults:
    """How often the faults come; all rates are per sensor, times in seconds."""

    spike_probability: float = 0.001
    dropout_gap: float = 300.0
    dropout_length: float = 10.0
    stuck_gap: float = 60.0
    stuck_length: float = 30.0


NO_FAULTS = Faults(spike_probability=0.0, dropout_gap=math.inf, stuck_gap=math.inf)


class Sensor:
    """One simulated sensor: ``reading(t)`` is its value at ``t`` seconds into the run."""

    def __init__(
        self,
        sensor_id: str,
        kind: Kind,
        seed: int,
        faults: Faults,
        stuck: bool = False,
        time_scale: float = 1.0,
        day_phase: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        """``rng``: a generator to share with others (a Random holds 2.5 KB of state, which
        counts for a fleet of thousands); by default the sensor has its own."""
        self.id = sensor_id
        self.kind = kind
        self._rng = rng or random.Random(f"{seed}:{sensor_id}:signal")
        rng = self._rng
        self._base = rng.uniform(*kind.base)
        self._drift = rng.gauss(0.0, kind.drift_per_hour) / 3600.0
        self._period = rng.uniform(*kind.cycle_period)
        self._phase = rng.random()
        self._time_scale = time_scale
        self._day_phase = day_phase
        self._spike_probability = faults.spike_probability
        self._dropouts = _episodes(seed, sensor_id, "dropout", faults.dropout_gap,
                                   faults.dropout_length)
        self._stuck = (
            _episodes(seed, sensor_id, "stuck", faults.stuck_gap, faults.stuck_length)
            if stuck
            else None
        )
        self._last: float | None = None

    def reading(self, t: float) -> float | None:
        """The value at ``t``, or None while the sensor is in a dropout."""
        if self._dropouts is not None and self._dropouts.active(t):
            return None
        if self._stuck is not None and self._stuck.active(t) and self._last is not None:
            return self._last
        value = round(self._clean(t * self._time_scale) + self._disturbance(), self.kind.decimals)
        value = min(max(value, self.kind.low), self.kind.high)
        self._last = value
        return value

    def _clean(self, t: float) -> float:
        kind = self.kind
        # Peak at 15:00 of the simulated day, trough at 03:00.
        hour_angle = 2 * math.pi * ((t + self._day_phase) / DAY - 15 / 24)
        value = self._base + kind.daily * math.cos(hour_angle) + self._drift * t
        if kind.cycle:
            turn = (t / self._period + self._phase) % 1.0
            if kind.cycle_shape == "square":
                value += kind.cycle if turn < 0.35 else 0.0
            else:
                value += kind.cycle * math.sin(2 * math.pi * turn)
        return value

    def _disturbance(self) -> float:
        rng = self._rng
        noise = rng.gauss(0.0, self.kind.noise)
        if self._spike_probability and rng.random() < self._spike_probability:
            noise += rng.choice((-1.0, 1.0)) * self.kind.spike * (0.5 + rng.random())
        return noise


def _episodes(seed: int, sensor_id: str, what: str, gap: float, length: float) -> Episodes | None:
    if math.isinf(gap):
        return None
    return Episodes(random.Random(f"{seed}:{sensor_id}:{what}"), gap, length)

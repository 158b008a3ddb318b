"""Stretches of time during which a fault is on: a dropout, a stuck sensor, an outage."""

from __future__ import annotations

import random


class Episodes:
    """Alternating quiet and active stretches, drawn lazily from a seeded generator.

    Gaps and lengths are exponential around their means, so episodes come at irregular times
    but reproducibly for one seed. ``active`` must be asked with non-decreasing times, which is
    how a simulator walks through its schedule.
    """

    def __init__(self, rng: random.Random, mean_gap: float, mean_length: float) -> None:
        if mean_gap <= 0 or mean_length <= 0:
            raise ValueError("mean_gap and mean_length must be > 0")
        self._rng = rng
        self._mean_gap = mean_gap
        self._mean_length = mean_length
        self._start = rng.expovariate(1 / mean_gap)
        self._end = self._start + rng.expovariate(1 / mean_length)

    def active(self, t: float) -> bool:
        """Whether an episode covers time ``t`` (seconds since the start)."""
        while t >= self._end:
            self._start = self._end + self._rng.expovariate(1 / self._mean_gap)
            self._end = self._start + self._rng.expovariate(1 / self._mean_length)
        return t >= self._start

"""Keeping a publishing rate by counting what is owed, not by sleeping per message."""

from __future__ import annotations

import math
import time


class Pacer:
    """How many of ``total`` slots, spread evenly at ``rate`` per second, are due by now.

    A sender publishes what is due in one batch, then waits for the next tick. Slots owed
    because a batch ran late are sent in the next batch, so the average rate holds even when
    single ticks do not; a sender slower than ``rate`` simply falls behind (``behind``).
    """

    def __init__(self, rate: float, total: int, tick: float = 0.005) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.total = total
        self.tick = tick
        self.started = time.monotonic()

    def due(self, now: float | None = None) -> int:
        """Slots due since the start, counting the one at time 0."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return min(self.total, int(elapsed * self.rate + 1e-9) + 1)

    def next_wait(self, sent: int, now: float | None = None) -> float:
        """Seconds to wait before the next batch, given ``sent`` slots are out: at least a tick,
        so that a fast rate goes out in batches, and no longer than until the next slot."""
        if sent >= self.total:
            return 0.0
        now = time.monotonic() if now is None else now
        next_at = self.started + sent / self.rate
        return max(self.tick, next_at - now) if next_at > now else 0.0

    def behind(self, sent: int, now: float | None = None) -> int:
        """Slots due but not yet sent."""
        return max(0, self.due(now) - sent)

    @property
    def duration(self) -> float:
        """The time the whole schedule takes at the exact rate."""
        return 0.0 if self.total <= 1 else (self.total - 1) / self.rate


def slots(rate: float, duration: float) -> int:
    """Slots in ``duration`` seconds at ``rate`` per second (the first one at time 0)."""
    return max(0, math.floor(rate * duration + 1e-9))

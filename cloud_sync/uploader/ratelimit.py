"""A token bucket on two measures at once (bytes and messages per second)."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimit:
    """Allows ``bytes_per_s`` and ``messages_per_s`` on average, with a burst of one second's
    worth of each; a rate of 0 means no limit on that measure."""

    def __init__(
        self, bytes_per_s: float, messages_per_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bytes_per_s = bytes_per_s
        self.messages_per_s = messages_per_s
        self._clock = clock
        self._bytes = bytes_per_s
        self._messages = messages_per_s
        self._at = clock()

    @property
    def unlimited(self) -> bool:
        return not self.bytes_per_s and not self.messages_per_s

    def delay(self) -> float:
        """Seconds to wait before the next message may go (0 if it may go now)."""
        self._refill()
        waits = [0.0]
        if self.bytes_per_s and self._bytes < 0:
            waits.append(-self._bytes / self.bytes_per_s)
        if self.messages_per_s and self._messages < 1:
            waits.append((1 - self._messages) / self.messages_per_s)
        return max(waits)

    def take(self, size: int) -> None:
        """Account for a message of ``size`` bytes that was sent (the byte bucket may go into
        debt, so a message larger than one second's allowance still goes, and the next waits)."""
        self._refill()
        if self.bytes_per_s:
            self._bytes -= size
        if self.messages_per_s:
            self._messages -= 1

    def _refill(self) -> None:
        now = self._clock()
        elapsed, self._at = now - self._at, now
        self._bytes = min(self.bytes_per_s, self._bytes + elapsed * self.bytes_per_s)
        self._messages = min(self.messages_per_s, self._messages + elapsed * self.messages_per_s)

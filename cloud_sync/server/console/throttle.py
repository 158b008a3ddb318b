"""Sign-in attempts, limited: password guessing gets a 429, and costs the server little.

Failures are counted per client address and per user name over a sliding ``window``; past
``limit`` failures for either, sign-in answers 429 with ``Retry-After`` until the oldest counted
failure leaves the window. At most ``concurrency`` Argon2 verifications run at once (each takes
64 MiB and ~0.1 s of CPU), so a flood of attempts cannot take the machine's memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable


class SignInThrottle:
    def __init__(
        self,
        limit: int = 10,
        window: float = 600.0,
        concurrency: int = 2,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self.verifying = asyncio.Semaphore(concurrency)

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until any of ``keys`` may try again (0: now)."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            times = self._trim(key, now)
            if times is not None and len(times) >= self.limit:
                wait = max(wait, times[0] + self.window - now)
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        for key in keys:
            if key not in self._failures and len(self._failures) >= self.max_keys:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(key, deque(maxlen=self.limit)).append(now)

    def succeeded(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _trim(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

"""Sign-in attempts, limited: password guessing gets a 429, and costs the server little.

Each attempt is *reserved* before its password is verified: it counts as a failure from the
moment it starts (so 30 guesses sent at once are 10 verified and 20 refused, not 30 verified),
and is taken back if the password was right. Attempts are counted over a sliding ``window`` per
client address and user name together (``limit``), and per client address (``client_limit``,
higher: many people may share one address); an IPv6 address counts as its /64. There is no
count per user name alone, so nobody can lock a user out by failing in their name from
elsewhere; guessing from many addresses is
slowed by each address's own limit and by ``concurrency``: at most that many Argon2
verifications run at once (each takes 64 MiB and ~0.1 s of CPU).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from collections.abc import Callable


def client_network(client: str) -> str:
    """The address attempts are counted under: an IPv6 client by its /64, the network one
    subscriber or server is given (a guesser holding it could otherwise try 10 times from each
    of 2^64 addresses); an IPv4 one, mapped into IPv6 or not, as itself."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class SignInThrottle:
    def __init__(
        self,
        limit: int = 10,
        window: float = 600.0,
        concurrency: int = 2,
        max_keys: int = 50_000,
        client_limit: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.client_limit = client_limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self.verifying = asyncio.Semaphore(concurrency)

    def keys(self, client: str, user: str) -> dict[str, int]:
        """The keys an attempt by ``user`` from ``client`` counts under, with their limits."""
        client = client_network(client)
        return {f"client:{client}": self.client_limit, f"pair:{client}\n{user}": self.limit}

    def reserve(self, keys: dict[str, int]) -> float:
        """Count an attempt under ``keys`` now and return 0, or, if any of them is at its limit,
        count nothing and return the seconds until it may try again. Nothing awaits in between:
        on the event loop, checking and counting are one step."""
        now = self._clock()
        wait = 0.0
        for key, limit in keys.items():
            times = self._trim(key, now)
            if times is not None and len(times) >= limit:
                wait = max(wait, times[0] + self.window - now)
        if wait > 0:
            return wait
        for key, limit in keys.items():
            if key not in self._failures and len(self._failures) >= self.max_keys:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(key, deque(maxlen=limit)).append(now)
        return 0.0

    def succeeded(self, keys: dict[str, int]) -> None:
        """The reserved attempt was right: it does not count, and the pair starts afresh."""
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                continue
            if key.startswith("pair:") or len(times) <= 1:
                del self._failures[key]
            else:
                times.pop()

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

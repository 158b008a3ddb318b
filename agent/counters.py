"""Counters kept in memory on the hot path and added to the outbox's totals at each commit."""

from __future__ import annotations

import logging
import time


class CounterSet:
    """Deltas by ``(scope, name)`` since the last ``take``; ``totals`` since start."""

    def __init__(self) -> None:
        self._deltas: dict[tuple[str, str], int] = {}
        self.totals: dict[tuple[str, str], int] = {}

    def incr(self, scope: str, name: str, by: int = 1) -> None:
        key = (scope, name)
        self._deltas[key] = self._deltas.get(key, 0) + by
        self.totals[key] = self.totals.get(key, 0) + by

    def take(self) -> dict[tuple[str, str], int]:
        deltas, self._deltas = self._deltas, {}
        return deltas

    def give_back(self, deltas: dict[tuple[str, str], int]) -> None:
        """Return deltas whose commit failed, so the next commit carries them."""
        for key, by in deltas.items():
            self._deltas[key] = self._deltas.get(key, 0) + by

    def scoped(self, scope: str) -> ScopedCounters:
        return ScopedCounters(self, scope)


class ScopedCounters:
    """The ``context.counters`` a module sees: its own scope of a ``CounterSet``."""

    def __init__(self, counters: CounterSet, scope: str) -> None:
        self._counters = counters
        self.scope = scope

    def incr(self, name: str, by: int = 1) -> None:
        self._counters.incr(self.scope, name, by)

    def get(self, name: str) -> int:
        return self._counters.totals.get((self.scope, name), 0)


class ThrottledLog:
    """Logs the first occurrence of each kind of problem, then at most one line per interval
    saying how many more there were, so a flood of bad input cannot flood the journal."""

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self._interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._next[kind] = now + self._interval
        more = self._suppressed.pop(kind, 0)
        if more:
            self._log.warning(msg + " (and %d more like it since the last report)", *args, more)
        else:
            self._log.warning(msg, *args)

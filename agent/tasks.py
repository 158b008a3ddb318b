"""Background tasks that must not die silently: restarted with backoff, and counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agent.backoff import Backoff
from agent.counters import CounterSet

log = logging.getLogger(__name__)


async def supervised(name: str, run: Callable[[], Awaitable[None]], counters: CounterSet) -> None:
    """Await ``run()`` until it returns; each time it raises, log it with its name, count it
    (``tasks.restarts:<name>``) and start it again after a growing delay."""
    backoff = Backoff(first=0.5, cap=30.0)
    while True:
        try:
            await run()
            return
        except Exception as exc:
            delay = backoff.next_delay()
            counters.incr("tasks", f"restarts:{name}")
            log.error("background task %s failed; restarting it in %.1f s", name, delay, exc_info=exc)
            await asyncio.sleep(delay)

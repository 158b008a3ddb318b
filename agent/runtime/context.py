"""The one module context: what a module instance gets as ``self.context`` in the daemon, in the
harness and in replay alike, so that a module behaves the same wherever it runs.

It checks what a module emits as the module emits it (a wrong argument raises in the module's
own step, where its traceback points at the culprit) and keeps the records until the runtime
takes them with ``take``. Its timers (``every``) are due on a monotonic clock the runtime
gives: ``time.monotonic`` in the daemon, the harness clock's own in the harness.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from agent.api import Counters, Record

log = logging.getLogger("agent.modules")
_INF = math.inf
T = TypeVar("T")

BLOCKING_THREADS = 4
"""Threads of one module's ``run_blocking`` pool: calls beyond this wait their turn, so a slow
service cannot make a module start threads without bound."""


class Timer:
    """One ``context.every``: due at ``due`` on the monotonic clock, then every ``interval``."""

    def __init__(self, interval: float, fn: Callable[[], object], due: float) -> None:
        self.interval = interval
        self.fn = fn
        self.due = due
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Delivered(Record):
    """A record as a module with named inputs gets it: ``input`` names the one it came through.
    Still the same three-field tuple everywhere else."""

    @property
    def input(self) -> str | None:
        name: str | None = self.__dict__.get("_input")
        return name


def delivered(record: Record, name: str) -> Delivered:
    tagged = Delivered(*record)
    tagged.__dict__["_input"] = name
    return tagged


class ModuleContext:
    """The ``agent.api.Context`` handed to a module instance."""

    def __init__(
        self,
        name: str,
        state: MutableMapping[str, Any],
        counters: Counters,
        clock: Callable[[], float],
        monotonic: Callable[[], float] | None = None,
        outputs: tuple[str, ...] = (),
        inputs: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.log = log.getChild(name)
        self.state = state
        self.counters = counters
        self.clock = clock
        self.monotonic = monotonic or clock
        self.inputs = inputs
        self.out: list[Record] = []
        self.timers: list[Timer] = []
        self._streams = {output: f"{name}.{output}" for output in outputs}
        self._pool: ThreadPoolExecutor | None = None
        self.max_clock_skew = 86400.0
        """The agent's ``max_clock_skew``: how far ahead of ``clock()`` a reading time is trusted."""

    def emit(self, data: dict[str, Any], ts: float | None = None, output: str | None = None) -> None:
        if type(data) is not dict:
            raise TypeError(f"emit takes a dict of data, not {type(data).__name__}")
        if ts is None:
            ts = self.clock()
        elif type(ts) is not float or not -_INF < ts < _INF:  # the common case costs one test
            ts = _timestamp(ts)
        self.out.append(Record(self.name if output is None else self._stream(output), ts, data))

    def _stream(self, output: str) -> str:
        try:
            return self._streams[output]
        except (KeyError, TypeError):
            declared = ", ".join(self._streams) or "none"
            raise ValueError(
                f"emit: {output!r} is not one of this module's outputs (declared: {declared})"
            ) from None

    def take(self) -> list[Record]:
        """What was emitted since the last ``take``, in order."""
        out = self.out
        if out:
            self.out = []
        return out

    # -- I/O and timers --------------------------------------------------------------------

    def run_blocking(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix=f"module-{self.name}")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def every(self, interval: float, fn: Callable[[], object]) -> Timer:
        if not (isinstance(interval, int | float) and 0 < interval < _INF):
            raise ValueError(f"every: the interval must be a positive number of seconds, not {interval!r}")
        timer = Timer(float(interval), fn, self.monotonic() + interval)
        self.timers.append(timer)
        return timer

    def next_timer(self) -> float:
        """When the earliest timer is due on the monotonic clock (infinity with none)."""
        return min((timer.due for timer in self.timers if not timer.cancelled), default=_INF)

    def due_timers(self, now: float) -> list[Timer]:
        """The timers due at ``now``, each moved to its next time (a late timer is not called
        again for the intervals it missed)."""
        self.timers = [timer for timer in self.timers if not timer.cancelled]
        due = [timer for timer in self.timers if timer.due <= now]
        for timer in due:
            timer.due += timer.interval
            if timer.due <= now:
                timer.due = now + timer.interval
        return due

    def close(self) -> None:
        """Forget the timers and let the thread pool go (a call still running finishes in its
        thread; nothing waits for it)."""
        self.timers = []
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _timestamp(ts: Any) -> float:
    if isinstance(ts, str | bytes | bool):  # float() would take "1.5"; True is no time either
        raise TypeError(f"emit's ts must be Unix seconds (a number), not {type(ts).__name__}")
    value = float(ts)  # numpy scalars too
    if not math.isfinite(value):
        raise ValueError(f"emit's ts must be a finite number, not {value}")
    return value

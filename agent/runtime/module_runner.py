"""Runs one module instance: feeds it batches from its queue, ticks it, routes what it emits,
and keeps the daemon running whatever the module does (see the promises in ``agent.api``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

from agent.api import Module, Record
from agent.bus import Bus, RecordQueue
from agent.config import ModulePlan, SupervisorConfig
from agent.counters import CounterSet, ScopedCounters, ThrottledLog
from agent.errors import ModuleHung
from agent.outbox import Quarantined
from agent.outbox.committer import Committer
from agent.runtime.loopwatch import LoopWatch

log = logging.getLogger("agent.modules")

START_TIMEOUT = 30.0


class ModuleContext:
    """The ``agent.api.Context`` handed to a module instance."""

    def __init__(
        self,
        name: str,
        state: MutableMapping[str, Any],
        counters: ScopedCounters,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.log = log.getChild(name)
        self.state = state
        self.counters = counters
        self.clock = clock
        self.out: list[Record] = []

    def emit(self, data: dict[str, Any], ts: float | None = None) -> None:
        if type(data) is not dict:
            raise TypeError(f"emit takes a dict of data, not {type(data).__name__}")
        self.out.append(Record(self.name, self.clock() if ts is None else float(ts), data))


class TickGate:
    """When a tick may close windows by the clock. A turn of the runner that comes much later
    than its tick interval means the event loop was held (a stalled module, a suspended
    process): readings that reached the broker meanwhile have not been read yet, so closing by
    timeout waits as long as the stall lasted. A tick also waits up to one more interval for
    the module's queue to drain: a module behind on its input is not a quiet sensor."""

    MAX_HOLD = 60.0

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last_turn = time.monotonic()
        self._hold_until = 0.0

    def turn(self, now: float, on_stall: Callable[[float], None]) -> None:
        gap, self._last_turn = now - self._last_turn, now
        stall = gap - self._interval
        if stall > max(1.0, self._interval):
            self._hold_until = max(self._hold_until, now + min(stall, self.MAX_HOLD))
            on_stall(stall)

    def postpone(self, now: float, due: float, queued: int) -> float | None:
        """None to tick now; else when to look again."""
        if now < self._hold_until:
            return self._hold_until
        if queued and now < due + self._interval:
            return now + 0.01  # after the next batch
        return None


class ModuleRunner:
    def __init__(
        self,
        plan: ModulePlan,
        bus: Bus,
        committer: Committer | None,
        counters: CounterSet,
        watch: LoopWatch,
        supervisor: SupervisorConfig,
        state: MutableMapping[str, Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.name = plan.spec.name
        self.queue = RecordQueue(plan.spec.queue)
        self._bus = bus
        self._committer = committer
        self._watch = watch
        self._supervisor = supervisor
        self._scope = f"module:{self.name}"
        self._counters = counters
        self.context = ModuleContext(self.name, state, counters.scoped(self._scope), clock)
        self._instance: Module[Any] | None = None
        self._batched = plan.cls.process_batch is not Module.process_batch
        self._errors_in_a_row = 0
        self._restarts = 0
        self._restart_not_before = 0.0
        self._errors_log = ThrottledLog(self.context.log, interval=30)
        self.status = "created"
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    @property
    def module(self) -> Module[Any]:
        if self._instance is None:
            raise RuntimeError(f"module {self.name!r} was never started")
        return self._instance

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> bool:
        """Start a new instance; False (status ``failed``) if it raised or timed out."""
        try:
            self._instance = self.plan.cls(self.plan.config, self.context)
            await self._guarded_async("start", self.module.start)
        except Exception as exc:
            self._record_error("start", exc)
            self.status = "failed"
            return False
        self.status = "running"
        return True

    async def run(self) -> None:
        """Process batches and ticks until cancelled."""
        interval = self.plan.cls.tick_interval
        next_tick = time.monotonic() + interval
        ticks = TickGate(interval)
        due: float | None = None  # when a postponed tick was first due
        while True:
            ticks.turn(time.monotonic(), self._stalled)
            batch = self.queue.get_nowait()
            if batch is None:
                wait = next_tick - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.queue.wait_nonempty(), wait)
                    continue
            try:
                if batch is not None:
                    self._process(batch)
                now = time.monotonic()
                if now >= next_tick:
                    later = ticks.postpone(now, due or next_tick, self.queue.size)
                    if later is None:
                        next_tick, due = now + interval, None
                        self._tick()
                    else:
                        next_tick, due = later, due or next_tick
            except ModuleHung:
                pass  # the watchdog's interrupt landed just after the step had finished
            await self._deliver()
            if self.status == "failed" or (
                self._errors_in_a_row >= self._supervisor.restart_after_errors
            ):
                await self._restart()
            await asyncio.sleep(0)  # let the sources and other modules have the loop

    async def finish(self) -> None:
        """Process what is queued, then stop the module (it emits what is open) and deliver."""
        while (batch := self.queue.get_nowait()) is not None:
            self._process(batch)
            await self._deliver()
        if self.status in ("running", "restarting"):
            try:
                await self._guarded_async("stop", self.module.stop)
            except Exception as exc:
                self._record_error("stop", exc)
        await self._deliver()
        self.status = "stopped"

    # -- steps -----------------------------------------------------------------------------

    def _process(self, batch: list[Record]) -> None:
        if self.status == "failed":
            self._counters.incr("dropped", f"module_failed:{self.name}", len(batch))
            return
        self._watch.enter(self.name, "process")
        try:
            if self._batched:
                try:
                    self.module.process_batch(batch)
                    self._errors_in_a_row = 0
                except Exception as exc:
                    for record in batch:
                        self._quarantine(record, exc)
                    self._record_error("process_batch", exc)
            else:
                self._process_each(batch)
        finally:
            self._watch.leave()
        self._counters.incr(self._scope, "processed", len(batch))

    def _process_each(self, batch: list[Record]) -> None:
        process = self.module.process
        start, end = 0, len(batch)
        while start < end:
            index = start
            try:
                for index in range(start, end):  # index names the culprit below
                    process(batch[index])
                self._errors_in_a_row = 0
                return
            except Exception as exc:
                self._quarantine(batch[index], exc)
                self._record_error("process", exc)
                start = index + 1
                if isinstance(exc, ModuleHung):
                    # The loop has been held long enough: the rest of the batch goes back to
                    # the front of the queue, and the sources and other modules run first.
                    rest = batch[start:]
                    self.queue.requeue(rest)
                    self._counters.incr(self._scope, "requeued_after_hang", len(rest))
                    return

    def _stalled(self, seconds: float) -> None:
        self._counters.incr(self._scope, "stalls_seen")
        self.context.log.warning(
            "the event loop was held for %.1f s; closing by timeout waits as long", seconds
        )

    def _tick(self) -> None:
        if self.status == "failed":
            return
        self._watch.enter(self.name, "tick")
        try:
            self.module.tick(self.context.clock())
        except Exception as exc:
            self._record_error("tick", exc)
        finally:
            self._watch.leave()

    async def _deliver(self) -> None:
        out = self.context.out
        if not out:
            return
        self.context.out = []
        self._counters.incr(self._scope, "emitted", len(out))
        if self._bus.publish(out):
            await self._bus.wait_room()
        if self.plan.spec.sync and self._committer is not None:
            self._committer.add(out)
            if self._committer.full:
                await self._committer.wait_room()

    async def _guarded_async(self, hook: str, fn: Callable[[], Any]) -> None:
        self._watch.enter(self.name, hook)
        try:
            await asyncio.wait_for(fn(), START_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"{hook} did not finish within {START_TIMEOUT:.0f} s") from None
        finally:
            self._watch.leave()

    # -- failures --------------------------------------------------------------------------

    def _quarantine(self, record: Record, exc: BaseException) -> None:
        self._counters.incr(self._scope, "quarantined")
        if self._committer is not None:
            self._committer.quarantine(
                Quarantined(self.name, record.topic, record.ts, record.data, _describe(exc))
            )

    def _record_error(self, hook: str, exc: BaseException) -> None:
        self._errors_in_a_row += 1
        kind = "hangs" if isinstance(exc, ModuleHung) else "errors"
        self._counters.incr(self._scope, kind)
        self.last_error = f"{hook}: {_describe(exc)}"
        self.last_error_at = time.time()
        self._errors_log.warning(
            hook, "module %r raised in %s: %s\n%s", self.name, hook, _describe(exc),
            "".join(traceback.format_exception(exc)).rstrip(),
        )

    async def _restart(self) -> None:
        """A module failing again and again gets a fresh instance, at most once per backoff."""
        now = time.monotonic()
        if now < self._restart_not_before:
            return
        self._restarts += 1
        delay = min(self._supervisor.restart_backoff_max, 2.0 ** (self._restarts - 1))
        self._restart_not_before = now + delay
        self._counters.incr(self._scope, "restarts")
        self.context.log.warning(
            "restarting after %s (next restart allowed in %.0f s)",
            "a failed start" if self.status == "failed" else f"{self._errors_in_a_row} errors in a row",
            delay,
        )
        self._errors_in_a_row = 0
        if self.status != "failed":
            self.status = "restarting"
            try:
                await self._guarded_async("stop", self.module.stop)
            except Exception as exc:
                self._record_error("stop", exc)
            await self._deliver()
        await self.start()

    def health(self) -> dict[str, Any]:
        busy = self._watch.busy()
        return {
            "status": "hung" if busy and busy.module == self.name else self.status,
            "use": self.plan.spec.use,
            "queue": self.queue.size,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

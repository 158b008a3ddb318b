"""Runs one module instance: feeds it batches from its queue, ticks it, routes what it emits,
and keeps the daemon running whatever the module does (see the promises in ``agent.api``)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from typing import Any

from agent.api import Module, Record
from agent.bus import Bus, RecordQueue
from agent.config import ModulePlan, SupervisorConfig
from agent.counters import CounterSet, ThrottledLog
from agent.errors import ModuleHung
from agent.outbox import Quarantined
from agent.outbox.checkpoint import Checkpoint
from agent.outbox.committer import Committer
from agent.runtime.context import ModuleContext
from agent.runtime.instance import ModuleInstance, RestartPolicy, describe
from agent.runtime.loopwatch import LoopWatch
from agent.wiring import synced_streams

STEP_BUDGET = 0.1
"""Seconds of work one sync step of a module is sized to (from the time its last step took a
record), so that a module blocking in ``process`` gives the loop back between records: signals,
sources and the other modules are held up by one record's time, not a whole batch's."""
BIG_CHUNK = 1 << 30
SLOW_STEP_PAUSE = 0.005


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
    """The daemon's side of a ``ModuleInstance``: its queue, its task on the event loop, and
    where its output and failures go (the bus, the outbox, the log, the counters)."""

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
        self._scope = f"module:{self.name}"
        self._counters = counters
        self.context = ModuleContext(
            self.name, state, counters.scoped(self._scope), clock,
            monotonic=time.monotonic, outputs=plan.cls.outputs,
            inputs=tuple(plan.spec.named_inputs),
        )
        self.instance = ModuleInstance(
            plan.cls, plan.config, self.context, self, watch, plan.spec.named_inputs
        )
        self._restarts = RestartPolicy(supervisor.restart_after_errors, supervisor.restart_backoff_max)
        self._errors_log = ThrottledLog(self.context.log, interval=30)
        self._step: asyncio.Future[None] | None = None  # an async step, shielded from cancel
        self._chunk = 1  # records a sync step takes: about STEP_BUDGET of work (the first measures)
        self._pause = 0.0
        self._synced = synced_streams(self.name, plan.cls.outputs, plan.spec.sync)
        self._sync_all = plan.spec.sync is True

    @property
    def module(self) -> Module[Any]:
        return self.instance.module

    @property
    def status(self) -> str:
        return self.instance.status

    @property
    def last_error(self) -> str | None:
        return self.instance.last_error

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, saved: Mapping[str, Any] | None = None) -> bool:
        """Start a new instance, restored from ``saved`` (its last checkpoint) if given; False
        (status ``failed``) if it raised or timed out."""
        if not await self.instance.start():
            self._reset_checkpoint()
            return False
        if saved and self.checkpoints:
            try:
                self.module.restore(saved)
                return True
            except Exception as exc:  # a checkpoint it cannot read: start afresh, say so
                self.instance.failed("restore", exc)
                if not await self.instance.start():
                    self._reset_checkpoint()
                    return False
        self._reset_checkpoint()
        return True

    @property
    def checkpoints(self) -> bool:
        """Whether the module keeps a checkpoint of its own (else only ``context.state``)."""
        return self.plan.cls.checkpoint is not Module.checkpoint

    def checkpoint_into(self, checkpoint: Checkpoint) -> None:
        """Add what changed in the module since the last checkpoint, and its queue."""
        if self.checkpoints and self.instance.status == "running":
            try:
                items = self.module.checkpoint()
            except Exception as exc:
                self.instance.failed("checkpoint", exc)
                items = None
            if items:
                checkpoint.add(self.name, items)
        # An async step in progress: what its finished records emitted goes into this commit
        # (downstream runners come after this one, their queues with it), and the records it is
        # still awaiting on, which have no effect yet, are saved ahead of the queue, to be
        # processed again after a crash rather than lost.
        self._hand_over()
        queued = self.instance.in_flight + self.queue.snapshot()
        if queued:
            assert checkpoint.queued is not None
            checkpoint.queued[self.name] = queued

    def _reset_checkpoint(self) -> None:
        """The module's saved state is void from the next commit on (a fresh instance)."""
        if self.checkpoints and self._committer is not None:
            self._committer.reset_checkpoint(self.name)

    async def run(self) -> None:
        """Process batches, ticks and timers until cancelled."""
        interval = self.plan.cls.tick_interval
        next_tick = time.monotonic() + interval
        ticks = TickGate(interval)
        due: float | None = None  # when a postponed tick was first due
        instance = self.instance
        context = self.context
        while True:
            ticks.turn(time.monotonic(), self._stalled)
            batch = self.queue.get_nowait()
            if batch is None:
                wait = min(next_tick, context.next_timer()) - time.monotonic()
                if wait > 0:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancel that lands in
                    # the loop step a batch arrives in, and a restart then waits for ever
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self.queue.wait_nonempty()
                    continue
            try:
                if batch is not None:
                    await self._process(batch)
                now = time.monotonic()
                if context.timers and context.next_timer() <= now:
                    await self._shielded(instance.run_timers(now))
                if now >= next_tick:
                    later = ticks.postpone(now, due or next_tick, self.queue.size)
                    if later is None:
                        next_tick, due = now + interval, None
                        instance.tick(context.clock())
                    else:
                        next_tick, due = later, due or next_tick
            except ModuleHung:
                pass  # the watchdog's interrupt landed just after the step had finished
            await self._deliver()
            if self._restarts.due(instance, time.monotonic()):
                await self._restart()
            await asyncio.sleep(self._pause)  # let the sources and other modules have the loop

    async def _process(self, batch: list[Record]) -> None:
        if self.instance.is_async:
            await self._shielded(self.instance.aprocess(batch))
            return
        if len(batch) > self._chunk:  # a slow module: the rest waits, the loop runs meanwhile
            self.queue.requeue(batch[self._chunk:])
            batch = batch[: self._chunk]
        started = time.monotonic()
        self.instance.process(batch)
        took = time.monotonic() - started
        cost = took / len(batch)
        self._chunk = max(1, int(STEP_BUDGET / cost)) if cost > 0 else BIG_CHUNK
        # after a step that held the loop, a short real pause (not one turn of the loop) lets
        # every chain of callbacks waiting meanwhile run through: a stop signal, a source's read
        self._pause = SLOW_STEP_PAUSE if took > STEP_BUDGET else 0.0

    async def _shielded(self, step: Coroutine[Any, Any, None]) -> None:
        """Run an async step so that cancelling ``run`` (the agent stops) does not cut it off:
        ``finish`` waits for it, or abandons its records, counted."""
        self._step = asyncio.ensure_future(step)
        await asyncio.shield(self._step)
        self._step = None

    async def finish(self, deadline: float = math.inf) -> None:
        """Finish the step in progress, process what is queued, then stop the module (it emits
        what is open) and deliver; by ``deadline`` (monotonic). What cannot be finished by then
        is quarantined and counted as ``abandoned``, and the module is left behind."""
        await self._finish_step(deadline)
        while (batch := self.queue.get_nowait()) is not None:
            await self._process_until(batch, deadline)
            await self._deliver()
        await self.instance.stop(timeout=max(deadline - time.monotonic(), 0.1))
        await self._deliver()
        self._reset_checkpoint()  # stop emitted what was open: nothing is left to restore

    async def _finish_step(self, deadline: float) -> None:
        step, self._step = self._step, None
        if step is None or step.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(step), max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
            count = self.instance.abandon("the agent stopped before the module finished them")
            self.context.log.warning("abandoned %d records the module had not finished", count)
        await self._deliver()

    async def _process_until(self, batch: list[Record], deadline: float) -> None:
        """``batch`` in chunks sized to what is left of the budget: a module that blocks cannot
        hold the shutdown past it (its first record measures how slow it is)."""
        done, size = 0, 1
        while done < len(batch):
            left = deadline - time.monotonic()
            if left <= 0:
                self._hand_back(batch[done:])
                return
            chunk = batch[done : done + size]
            started = time.monotonic()
            await self._process(chunk)
            cost = (time.monotonic() - started) / len(chunk)
            done += len(chunk)
            size = len(batch) if cost <= 0 else max(1, int(left * 0.25 / cost))

    def _hand_back(self, records: list[Record]) -> None:
        """Records left in the queue when the budget ran out: quarantined, counted."""
        queued = [record for batch in iter(self.queue.get_nowait, None) for record in batch]
        count = self.instance.abandon("the agent stopped before the module could take them",
                                      records + queued)
        self.context.log.warning("abandoned %d queued records at stop", count)

    async def _restart(self) -> None:
        """A module failing again and again gets a fresh instance, at most once per backoff."""
        instance = self.instance
        delay = self._restarts.note(time.monotonic())
        self.count("restarts")
        self.context.log.warning(
            "restarting after %s (next restart allowed in %.0f s)",
            "a failed start" if instance.status == "failed"
            else f"{instance.errors_in_a_row} errors in a row",
            delay,
        )
        instance.errors_in_a_row = 0
        if instance.status != "failed":
            instance.status = "restarting"
            await instance.stop()
            await self._deliver()
        await instance.start()
        self._reset_checkpoint()

    async def _deliver(self) -> None:
        bus_full = self._hand_over()
        if bus_full is None:
            return
        if bus_full:
            await self._bus.wait_room()
        if self._synced and self._committer is not None and self._committer.full:
            await self._committer.wait_room()

    def _hand_over(self) -> bool | None:
        """Put what the module emitted on the bus and pending for the outbox, both in one step
        of the loop (a checkpoint must find the output in both or in neither); whether the bus
        is full now (None: nothing was emitted)."""
        out = self.context.take()
        if not out:
            return None
        self._counters.incr(self._scope, "emitted", len(out))
        bus_full = self._bus.publish(out)
        if self._synced and self._committer is not None:
            synced = self._synced
            self._committer.add(out if self._sync_all else [r for r in out if r.topic in synced])
        return bus_full

    def _stalled(self, seconds: float) -> None:
        self.count("stalls_seen")
        self.context.log.warning(
            "the event loop was held for %.1f s; closing by timeout waits as long", seconds
        )

    # -- what the instance reports (``instance.Events``) -------------------------------------

    def requeue(self, records: list[Record]) -> None:
        self.queue.requeue(records)

    def count(self, name: str, by: int = 1) -> None:
        self._counters.incr(self._scope, name, by)

    def dropped(self, reason: str, by: int) -> None:
        self._counters.incr("dropped", reason, by)

    def quarantine(self, record: Record, hook: str, exc: BaseException) -> None:
        if self._committer is not None:
            self._committer.quarantine(
                Quarantined(self.name, record.topic, record.ts, record.data, describe(exc))
            )

    def error(self, hook: str, exc: BaseException) -> None:
        self._errors_log.warning(
            hook, "module %r raised in %s: %s\n%s", self.name, hook, describe(exc),
            "".join(traceback.format_exception(exc)).rstrip(),
        )

    def health(self) -> dict[str, Any]:
        step = self._watch.busy()
        return {
            "status": "hung" if step and step.module == self.name else self.status,
            "use": self.plan.spec.use,
            "queue": self.queue.size,
            "in_flight": len(self.instance.in_flight),
            "last_error": self.instance.last_error,
            "last_error_at": self.instance.last_error_at,
        }

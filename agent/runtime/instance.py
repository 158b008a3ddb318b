"""One module instance and the rules its hooks run by, the same in the daemon
(``runtime.module_runner``), the harness and replay (``runtime.stepper``).

The rules are the promises of ``agent.api``: ``start`` once before anything else; a record that
makes ``process`` raise is quarantined and the next one is processed; a ``process_batch`` that
raises has its whole batch quarantined (the module owned the loop over it); every error is
counted and reported; a module that keeps failing is restarted with a growing delay. What to
do with a quarantined record or an error (commit it, log it, fail a test) is the caller's.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.api import Module, ModuleConfig, Record
from agent.errors import ModuleHung
from agent.runtime.context import ModuleContext, delivered
from agent.topics import matches

START_TIMEOUT = 30.0
"""Longest a ``start`` or ``stop`` may take before it counts as failed."""


class Watch(Protocol):
    """Told when a step begins and ends (the daemon's ``LoopWatch`` interrupts a hung one)."""

    def enter(self, module: str, hook: str) -> None: ...

    def leave(self) -> None: ...


class _NoWatch:
    def enter(self, module: str, hook: str) -> None:
        pass

    def leave(self) -> None:
        pass


class Events(Protocol):
    """Where an instance reports what happened; the daemon commits and logs, the harness keeps."""

    def count(self, name: str, by: int = 1) -> None:
        """The runtime's counters of the instance: processed, quarantined, errors, hangs..."""

    def quarantine(self, record: Record, hook: str, exc: BaseException) -> None:
        """``record`` made ``hook`` raise; it is set aside, not lost."""

    def error(self, hook: str, exc: BaseException) -> None:
        """``hook`` raised ``exc`` (after the records it concerns were quarantined)."""

    def dropped(self, reason: str, by: int) -> None:
        """Records the instance could not take (it is not running), by reason."""

    def requeue(self, records: list[Record]) -> None:
        """Put ``records`` back at the front of the instance's input, to be processed next."""


class ModuleInstance:
    """A module class, its config and context, and the instance that is running, if any."""

    def __init__(
        self,
        cls: type[Module[Any]],
        config: ModuleConfig,
        context: ModuleContext,
        events: Events,
        watch: Watch | None = None,
        named_inputs: Mapping[str, str] | None = None,
    ) -> None:
        self.cls = cls
        self.config = config
        self.context = context
        self.name = context.name
        self.events = events
        self.watch = watch or _NoWatch()
        self.batched = cls.process_batch is not Module.process_batch
        self.is_async = inspect.iscoroutinefunction(cls.process_batch if self.batched else cls.process)
        self._named = dict(named_inputs or {})
        self._input_of: dict[str, str | None] = {}  # topic -> the named input it matches
        self._step: list[Record] = []  # the records of the async step in progress...
        self._done = 0  # ...of which this many are finished
        self.status = "created"
        self.errors_in_a_row = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._module: Module[Any] | None = None

    @property
    def module(self) -> Module[Any]:
        if self._module is None:
            raise RuntimeError(f"module {self.name!r} was never started")
        return self._module

    @property
    def running(self) -> bool:
        return self.status == "running"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> bool:
        """A new instance, started; False (status ``failed``) if it raised or timed out."""
        try:
            self._module = self.cls(self.config, self.context)
            await self._guarded("start", self._module.start)
        except Exception as exc:
            self.failed("start", exc)
            self.status = "failed"
            return False
        self.status = "running"
        return True

    async def stop(self, timeout: float = START_TIMEOUT) -> None:
        """``stop`` the running instance (it emits what is open); a failed one has nothing to
        stop. The instance is ``stopped`` afterwards either way, its timers gone."""
        if self.status in ("running", "restarting"):
            try:
                await self._guarded("stop", self.module.stop, timeout)
            except Exception as exc:
                self.failed("stop", exc)
        self.context.close()
        self.status = "stopped"

    async def _guarded(
        self, hook: str, fn: Callable[[], Any], timeout: float = START_TIMEOUT
    ) -> None:
        self.watch.enter(self.name, hook)
        try:
            async with asyncio.timeout(max(timeout, 0.001)):  # not wait_for: it can drop a cancel (3.11)
                await fn()
        except TimeoutError:
            raise TimeoutError(f"{hook} did not finish within {timeout:.1f} s") from None
        finally:
            self.watch.leave()

    # -- steps -----------------------------------------------------------------------------

    def process(self, batch: list[Record]) -> None:
        """Hand ``batch`` to the module, quarantining what it raises on; an instance that is
        not running (its start failed) drops the batch, counted."""
        admitted = self._admitted(batch)
        if admitted is None:
            return
        batch = admitted
        self.watch.enter(self.name, "process")
        try:
            if self.batched:
                try:
                    self.module.process_batch(batch)
                    self.errors_in_a_row = 0
                except Exception as exc:
                    for record in batch:
                        self._quarantine(record, "process_batch", exc)
                    self.failed("process_batch", exc)
            else:
                self._process_each(batch)
        finally:
            self.watch.leave()
        self.events.count("processed", len(batch))

    def _admitted(self, batch: list[Record]) -> list[Record] | None:
        """``batch`` as the module gets it (tagged with its inputs' names where it has named
        inputs); None, the batch dropped and counted, when the instance is not running."""
        if self.status != "running":
            why = "failed" if self.status == "failed" else "not_running"
            self.events.dropped(f"module_{why}:{self.name}", len(batch))
            return None
        return self.tagged(batch) if self._named else batch

    def _process_each(self, batch: list[Record]) -> None:
        process = self.module.process
        start, end = 0, len(batch)
        while start < end:
            index = start
            try:
                for index in range(start, end):  # index names the culprit below
                    process(batch[index])
                self.errors_in_a_row = 0
                return
            except Exception as exc:
                self._quarantine(batch[index], "process", exc)
                self.failed("process", exc)
                start = index + 1
                if isinstance(exc, ModuleHung) and start < end:
                    # The loop has been held long enough: the rest of the batch goes back to
                    # the front of the queue, and the sources and other modules run first.
                    self.events.count("requeued_after_hang", end - start)
                    self.events.requeue(batch[start:])
                    return

    @property
    def in_flight(self) -> list[Record]:
        """Records of the async step in progress that the module has not finished."""
        return self._step[self._done:]

    async def aprocess(self, batch: list[Record]) -> None:
        """``process`` for an ``async def`` module: the loop is free while it awaits, and the
        records not finished yet stay in ``in_flight``."""
        admitted = self._admitted(batch)
        if admitted is None:
            return
        batch = admitted
        # no try/finally: records of a step cancelled at stop stay in ``in_flight`` for
        # ``abandon`` to account for
        self._step, self._done = batch, 0
        if self.batched:
            try:
                await self.module.process_batch(batch)  # type: ignore[misc]
                self.errors_in_a_row = 0
            except Exception as exc:
                for record in batch:
                    self._quarantine(record, "process_batch", exc)
                self.failed("process_batch", exc)
            self._done = len(batch)
            self.events.count("processed", len(batch))
        else:
            await self._aprocess_each()

    async def _aprocess_each(self) -> None:
        process = self.module.process
        records, count = self._step, self.events.count
        for index, record in enumerate(records):
            try:
                await process(record)  # type: ignore[misc]
                self.errors_in_a_row = 0
            except Exception as exc:
                self._quarantine(record, "process", exc)
                self.failed("process", exc)
            self._done = index + 1
            count("processed")  # one by one: a step cut off at stop counts right

    def abandon(self, why: str, records: list[Record] | None = None) -> int:
        """Quarantine, counted as ``abandoned``, the records of an unfinished step (or
        ``records``, never handed to the module): the agent stops and cannot wait longer. How
        many there were."""
        if records is None:
            records, self._step = self.in_flight, []
        for record in records:
            self.events.quarantine(record, "stop", Abandoned(why))
        if records:
            self.events.count("abandoned", len(records))
        return len(records)

    async def run_timers(self, now: float) -> None:
        """Call the timers due at ``now`` (monotonic), each error counted like any other."""
        if self.status != "running":
            return
        for timer in self.context.due_timers(now):
            self.watch.enter(self.name, "timer")
            try:
                result = timer.fn()
                if inspect.isawaitable(result):
                    self.watch.leave()  # awaiting frees the loop: not a hang
                    await result
            except Exception as exc:
                self.failed("timer", exc)
            finally:
                self.watch.leave()

    def tagged(self, batch: list[Record]) -> list[Record]:
        """The batch with each record saying which named input it came through (the first, in
        config order, whose filter matches its topic)."""
        input_of = self._input_of
        out: list[Record] = []
        for record in batch:
            topic = record.topic
            if topic not in input_of:
                input_of[topic] = next(
                    (name for name, f in self._named.items() if matches(f, topic)), None
                )
            name = input_of[topic]
            out.append(record if name is None else delivered(record, name))
        return out

    def tick(self, now: float) -> None:
        if self.status != "running":
            return
        self.watch.enter(self.name, "tick")
        try:
            self.module.tick(now)
        except Exception as exc:
            self.failed("tick", exc)
        finally:
            self.watch.leave()

    # -- failures --------------------------------------------------------------------------

    def _quarantine(self, record: Record, hook: str, exc: BaseException) -> None:
        self.events.count("quarantined")
        self.events.quarantine(record, hook, exc)

    def failed(self, hook: str, exc: BaseException) -> None:
        """Count and report an error of ``hook``."""
        self.errors_in_a_row += 1
        self.events.count("errors")  # a hang is an error too; it is also counted on its own
        if isinstance(exc, ModuleHung):
            self.events.count("hangs")
        self.last_error = f"{hook}: {describe(exc)}"
        self.last_error_at = time.time()
        self.events.error(hook, exc)


class Abandoned(Exception):
    """Why a record was set aside unfinished: the agent was stopping."""


class RestartPolicy:
    """When a failing instance gets a fresh one: after ``after_errors`` errors in a row or a
    failed start, at most once per delay, the delay doubling from one second up to
    ``backoff_max``. Time is whatever clock the caller runs on (monotonic in the daemon)."""

    def __init__(self, after_errors: int, backoff_max: float) -> None:
        self.after_errors = after_errors
        self.backoff_max = backoff_max
        self.restarts = 0
        self._not_before = -float("inf")

    def due(self, instance: ModuleInstance, now: float) -> bool:
        wanted = instance.status == "failed" or instance.errors_in_a_row >= self.after_errors
        return wanted and now >= self._not_before

    def note(self, now: float) -> float:
        """A restart happens at ``now``: the delay until the next one may."""
        self.restarts += 1
        delay = min(self.backoff_max, 2.0 ** (self.restarts - 1))
        self._not_before = now + delay
        return delay


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

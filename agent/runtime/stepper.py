"""The stepping engine: a config's module instances wired by topic as on the daemon's bus, driven
step by step on a clock that moves only when told. The harness (``agent.testing``) and
``edge-agent replay`` run modules through it; the daemon runs the same ``ModuleInstance`` rules
on its event loop (``runtime.module_runner``).

Each module has an inbox; a dispatch routes records to the inboxes and processes them, upstream
modules first, until nothing is left (what a module emits is routed on at once, never to itself).
Ticks come when the clock passes a module's next tick. A module that keeps failing is restarted
as in the daemon, its delay measured on this clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.api import Record
from agent.config import ModulePlan, SupervisorConfig
from agent.runtime.context import ModuleContext
from agent.runtime.instance import ModuleInstance, RestartPolicy
from agent.runtime.pipeline import upstream_first
from agent.topics import matches

T = TypeVar("T")

BATCH_SIZE = 512
"""Records handed to a module per ``process_batch`` call, about what the MQTT source delivers."""
_MAX_ROUNDS = 1000  # records bouncing between modules this often are a cycle in the config

# The counts the runtime keeps about a module that the module's own ``counters`` also show in
# the harness (``processed`` and ``emitted`` stay in ``Stepper.totals`` only).
_SHOWN = frozenset({"errors", "hangs", "quarantined", "restarts"})


class ManualClock:
    """A clock that moves only when told: ``clock()`` is now, in Unix seconds.

    Beside the wall time it keeps a monotonic time (``monotonic``), which timers
    (``context.every``) follow: time passing (``advance``, readings moving the clock) moves
    both; ``set``, a jump of the wall clock, moves only the wall time.
    """

    def __init__(self, now: float = 0.0) -> None:
        self._now = float(now)
        self.elapsed = 0.0
        """The monotonic time: seconds that have passed since the clock was made."""

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        """Time passes up to ``value`` (time never passes backwards: going back is a jump)."""
        self.elapsed += max(0.0, value - self._now)
        self._now = float(value)

    def monotonic(self) -> float:
        return self.elapsed

    def set(self, now: float) -> None:
        """Jump to ``now``, backwards too (an NTP correction, a board with no RTC); timers
        do not notice."""
        self._now = float(now)

    def advance(self, seconds: float) -> None:
        self.now = self._now + seconds


class RecordingCounters:
    """Counters as a plain ``dict`` of name to count (``context.counters`` in the harness)."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def incr(self, name: str, by: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + by

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)

    def __repr__(self) -> str:
        return f"RecordingCounters({self.values!r})"


class _Counting(RecordingCounters):
    """A module's own counters, also added to the totals of its stage."""

    def __init__(self, totals: RecordingCounters) -> None:
        super().__init__()
        self._totals = totals

    def incr(self, name: str, by: int = 1) -> None:
        super().incr(name, by)
        self._totals.incr(name, by)


@dataclass
class Quarantined:
    """A record a module raised on, with the module, the hook and the error; ``record`` is
    None for an error outside ``process`` (``start``, ``tick``, ``stop``)."""

    module: str
    hook: str
    record: Record | None
    error: BaseException


class Stage:
    """One module instance of a stepper, with its inbox and tick schedule; it is the
    ``instance.Events`` of its instance."""

    def __init__(self, stepper: Stepper, plan: ModulePlan, state: MutableMapping[str, Any]) -> None:
        self.stepper = stepper
        self.name = plan.spec.name
        self.inputs = tuple(plan.spec.filters)
        self.totals = RecordingCounters()
        """Every count of the instance, as the daemon keeps them (``processed``, ``emitted``...)."""
        self.context = ModuleContext(
            self.name, state, _Counting(self.totals), stepper.clock,
            monotonic=stepper.clock.monotonic, outputs=plan.cls.outputs,
            inputs=tuple(plan.spec.named_inputs),
        )
        self.instance = ModuleInstance(
            plan.cls, plan.config, self.context, self, named_inputs=plan.spec.named_inputs
        )
        self.restarts = RestartPolicy(
            stepper.supervisor.restart_after_errors, stepper.supervisor.restart_backoff_max
        )
        self.next_tick = float("inf")
        self.inbox: list[Record] = []

    @property
    def counters(self) -> RecordingCounters:
        counters = self.context.counters
        assert isinstance(counters, RecordingCounters)
        return counters

    def count(self, name: str, by: int = 1) -> None:
        if name in _SHOWN:
            self.counters.incr(name, by)
        else:
            self.totals.incr(name, by)

    def dropped(self, reason: str, by: int) -> None:
        self.stepper.dropped[reason] = self.stepper.dropped.get(reason, 0) + by

    def requeue(self, records: list[Record]) -> None:
        self.inbox[:0] = records

    def quarantine(self, record: Record, hook: str, exc: BaseException) -> None:
        self.stepper.quarantined.append(Quarantined(self.name, hook, record, exc))

    def error(self, hook: str, exc: BaseException) -> None:
        if hook not in ("process", "process_batch", "start"):
            self.stepper.quarantined.append(Quarantined(self.name, hook, None, exc))
        if hook == "start":
            self.stepper.start_errors.append((self.name, exc))
        if self.stepper.strict:
            raise exc


class Stepper:
    """Module instances wired by topic, stepped on a ``ManualClock``.

    ``strict`` re-raises a module's error at once (a test fails on it); otherwise the record is
    quarantined and counted and processing goes on, as in the daemon. ``follow_readings`` moves
    the clock up to each reading's time (never back) before it is processed, as replay does.
    ``on_emit`` sees every emitted record; ``keep`` keeps them in ``emitted``.
    """

    def __init__(
        self,
        plans: Sequence[ModulePlan],
        *,
        clock: ManualClock | None = None,
        follow_readings: bool = True,
        strict: bool = False,
        states: Mapping[str, MutableMapping[str, Any]] | None = None,
        on_emit: Callable[[Record], None] | None = None,
        keep: bool = True,
        batch_size: int = BATCH_SIZE,
        supervisor: SupervisorConfig | None = None,
    ) -> None:
        self.clock = clock or ManualClock()
        self.follow_readings = follow_readings
        self.strict = strict
        self.supervisor = supervisor or SupervisorConfig()
        self.emitted: list[Record] = []
        self.quarantined: list[Quarantined] = []
        self.start_errors: list[tuple[str, BaseException]] = []
        """Modules whose constructor or ``start`` raised, with the error."""
        self.dropped: dict[str, int] = {}
        """Records not processed, by reason (``module_failed:<name>``), as the daemon counts."""
        self._on_emit = on_emit
        self._keep = keep
        self._batch_size = batch_size
        states = states or {}
        self.stages = [
            Stage(self, plan, states.get(plan.spec.name, {}))
            for plan in upstream_first(list(plans))
        ]
        self._by_name = {stage.name: stage for stage in self.stages}
        self._routes: dict[str, tuple[Stage, ...]] = {}
        self._runner: asyncio.Runner | None = None

    def stage(self, name: str | None) -> Stage:
        """The stage of module ``name`` (the first module by default)."""
        if name is None:
            return self.stages[0]
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no module named {name!r} in this harness") from None

    # -- lifecycle -------------------------------------------------------------------------

    async def astart(self) -> None:
        """Start every module, downstream first as the daemon does."""
        for stage in reversed(self.stages):
            await self._start(stage)

    async def astop(self) -> list[Record]:
        """Stop every module upstream first, routing what they flush; what was emitted
        meanwhile. Stopping twice does nothing."""
        mark = len(self.emitted)
        for stage in self.stages:
            await self._stop(stage)
        return self.emitted[mark:]

    async def arestart(self, name: str | None = None) -> list[Record]:
        """Stop module ``name`` and start a new instance with its saved state, as the daemon
        does across a restart: the state goes through JSON on the way, as it would."""
        stage = self.stage(name)
        mark = len(self.emitted)
        await self._stop(stage)
        state = stage.context.state
        saved = json.loads(json.dumps(dict(state), allow_nan=False))
        state.clear()
        state.update(saved)
        await self._start(stage)
        return self.emitted[mark:]

    async def _start(self, stage: Stage) -> None:
        if await stage.instance.start():
            stage.next_tick = self.clock.now + stage.instance.cls.tick_interval
        self._collect(stage)
        await self._drain()

    async def _stop(self, stage: Stage) -> None:
        if stage.instance.status in ("stopped", "created"):
            return  # never started, or stopped already
        await stage.instance.stop()
        self._collect(stage)
        await self._drain()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one of the ``a...`` steps to its end on the stepper's own event loop."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        try:
            return self._runner.run(coro)
        except RuntimeError as exc:
            if "running event loop" in str(exc):
                coro.close()
                raise RuntimeError(
                    "the harness was called from a running event loop: "
                    "use `await harness.astart()` / `astop()` / `arestart()` there"
                ) from None
            raise

    def close(self) -> None:
        """Stop what is still running and release the event loop."""
        if any(stage.instance.status not in ("stopped", "created") for stage in self.stages):
            self.run(self.astop())
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    # -- driving ---------------------------------------------------------------------------

    async def afeed(self, records: Iterable[Record]) -> list[Record]:
        """Process ``records`` in order, in batches; what was emitted meanwhile.

        With ``follow_readings`` the clock moves up to each record's time and modules are
        ticked as it passes their next tick, between batches.
        """
        mark = len(self.emitted)
        clock = self.clock
        follow = self.follow_readings
        size = self._batch_size
        due = self._next_due()
        pending: list[Record] = []
        for record in records:
            ts = record[1]
            if follow and ts > clock.now:
                if ts >= due:
                    if pending:
                        await self._dispatch(pending)
                        pending = []
                    clock.now = ts
                    await self._tick_due()
                    due = self._next_due()
                else:
                    clock.now = ts
            pending.append(record)
            if len(pending) >= size:
                await self._dispatch(pending)
                pending = []
        if pending:
            await self._dispatch(pending)
        return self.emitted[mark:]

    async def aadvance_to(self, when: float, step: float | None = None) -> list[Record]:
        """Move the clock forward to ``when``, ticking modules whose tick is due: once at the
        end, or at every ``step`` on the way."""
        mark = len(self.emitted)
        if step is not None and step > 0:
            while self.clock.now + step < when:
                self.clock.now += step
                await self._tick_due()
        self.clock.now = max(self.clock.now, when)
        await self._tick_due()
        return self.emitted[mark:]

    async def atick(self, name: str | None = None) -> list[Record]:
        """Tick every module (or the one named) now, due or not."""
        mark = len(self.emitted)
        for stage in self.stages if name is None else [self.stage(name)]:
            await self._tick(stage)
        return self.emitted[mark:]

    # -- internals -------------------------------------------------------------------------

    def _next_due(self) -> float:
        """The wall time at which the next tick or timer is due, were time to pass."""
        now, elapsed = self.clock.now, self.clock.elapsed
        return min(
            (min(stage.next_tick, now + stage.context.next_timer() - elapsed)
             for stage in self.stages if stage.instance.running),
            default=float("inf"),
        )

    async def _tick_due(self) -> None:
        now = self.clock.now
        for stage in self.stages:
            if stage.instance.running and stage.context.next_timer() <= self.clock.elapsed:
                await stage.instance.run_timers(self.clock.elapsed)
                self._collect(stage)
                await self._drain()
            if stage.instance.running and now >= stage.next_tick:
                await self._tick(stage)

    async def _tick(self, stage: Stage) -> None:
        if not stage.instance.running:
            return
        now = self.clock.now
        stage.next_tick = now + stage.instance.cls.tick_interval
        stage.instance.tick(now)
        self._collect(stage)
        await self._drain()
        await self._restart_if_due(stage)

    async def _dispatch(self, records: list[Record]) -> None:
        """Route records from outside (the sources) and everything they cause downstream."""
        self._route(records, None)
        await self._drain()
        for stage in self.stages:
            await self._restart_if_due(stage)

    async def _drain(self) -> None:
        for _ in range(_MAX_ROUNDS):
            busy = False
            for stage in self.stages:
                if stage.inbox:
                    busy = True
                    batch, stage.inbox = stage.inbox, []
                    if stage.instance.is_async:
                        await stage.instance.aprocess(batch)
                    else:
                        stage.instance.process(batch)
                    self._collect(stage)
            if not busy:
                return
        names = [stage.name for stage in self.stages if stage.inbox]
        raise RuntimeError(f"records keep cycling between modules {names}: check their inputs")

    async def _restart_if_due(self, stage: Stage) -> None:
        instance = stage.instance
        if instance.status in ("stopped", "created") or not stage.restarts.due(instance, self.clock.now):
            return
        stage.restarts.note(self.clock.now)
        stage.count("restarts")
        instance.errors_in_a_row = 0
        if instance.status != "failed":
            instance.status = "restarting"
            await self._stop(stage)
        await self._start(stage)

    def _collect(self, stage: Stage) -> None:
        out = stage.context.take()
        if not out:
            return
        stage.count("emitted", len(out))
        if self._keep:
            self.emitted += out
        if self._on_emit is not None:
            for record in out:
                self._on_emit(record)
        self._route(out, stage)

    def _route(self, records: list[Record], sender: Stage | None) -> None:
        routes = self._routes
        for record in records:
            destinations = routes.get(record.topic)
            if destinations is None:
                destinations = routes[record.topic] = tuple(
                    stage for stage in self.stages
                    if any(matches(f, record.topic) for f in stage.inputs)
                )
            for stage in destinations:
                if stage is not sender:  # a module never receives its own output
                    stage.inbox.append(record)


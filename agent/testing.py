"""The module writer's harness: run a module, or a whole pipeline, over readings with a clock you
control, and look at what it emitted, what it counted and what it kept as state.

    from agent.testing import module_harness, reading

    def test_mean_of_two_readings():
        harness = module_harness("window", every="10s", stats=["mean"])
        out = harness.run([reading("t1", 0, 1.0), reading("t1", 5, 3.0)])
        assert out[0].data["mean"] == 2.0

Under pytest the ``harness`` fixture does the same in one line and stops what it started
(``edge-agent`` registers it as a pytest plugin)::

    def test_mean(harness):
        out = harness("window", every="10s").run(readings)

The harness keeps the runtime's promises (see ``agent.api``): hooks are never concurrent, ``tick``
comes about every ``tick_interval`` seconds of the harness clock, ``stop`` comes after the last
``process``, and a module never receives its own output. By default the clock follows the
readings: before a batch is processed it moves up to the newest reading's time (never back),
which is what replay does. ``clock.set`` moves it anywhere, backwards too, to test a clock jump.

A module that raises fails the test at once (``strict=True``, the default). With
``strict=False`` the harness behaves like the daemon: the record is quarantined, the error is
counted, and processing goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.api import Module, ModuleConfig, Record
from agent.config import LoadedConfig, ModulePlan, load_config
from agent.registry import resolve_module
from agent.runtime.pipeline import upstream_first
from agent.topics import matches

log = logging.getLogger("agent.modules")

BATCH_SIZE = 512
"""Records handed to a module per ``process_batch`` call, about what the MQTT source delivers."""
_MAX_ROUNDS = 1000  # records bouncing between modules this often are a cycle in the config


class ManualClock:
    """A clock that moves only when told: ``clock()`` is now, in Unix seconds."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        """Move to ``now``, backwards too (an NTP correction, a board with no RTC)."""
        self.now = float(now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingCounters:
    """The ``context.counters`` of a harness: a plain ``dict`` of name to count."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def incr(self, name: str, by: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + by

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)

    def __repr__(self) -> str:
        return f"RecordingCounters({self.values!r})"


class HarnessContext:
    """The ``agent.api.Context`` a module gets in the harness."""

    def __init__(
        self, name: str, state: MutableMapping[str, Any], clock: Callable[[], float]
    ) -> None:
        self.name = name
        self.log = log.getChild(name)
        self.state = state
        self.counters = RecordingCounters()
        self.clock = clock
        self.out: list[Record] = []

    def emit(self, data: dict[str, Any], ts: float | None = None) -> None:
        self.out.append(Record(self.name, self.clock() if ts is None else ts, data))


@dataclass
class Quarantined:
    """A record a module raised on (``strict=False``), with the module and the error."""

    module: str
    hook: str
    record: Record | None
    error: BaseException


@dataclass
class _Stage:
    """One module instance of a harness, with its inbox and tick schedule."""

    name: str
    cls: type[Module[Any]]
    config: ModuleConfig
    inputs: tuple[str, ...]
    context: HarnessContext
    module: Module[Any] | None = None
    next_tick: float = float("inf")
    inbox: list[Record] = field(default_factory=list)
    stopped: bool = True

    @property
    def batched(self) -> bool:
        return self.cls.process_batch is not Module.process_batch


def reading(
    sensor: str, ts: float, value: Any, unit: str | None = None, prefix: str = "sensors/"
) -> Record:
    """A sensor reading as the MQTT source makes it: topic ``sensors/<sensor>``.

    ``value`` is taken as given, so a test can send ``"hot"`` or ``float("nan")`` on purpose.
    """
    data: dict[str, Any] = {"sensor": sensor, "value": value}
    if unit is not None:
        data["unit"] = unit
    return Record(f"{prefix}{sensor}", float(ts), data)


def readings(rows: Iterable[tuple[Any, ...]], prefix: str = "sensors/") -> list[Record]:
    """Readings from ``(sensor, ts, value)`` or ``(sensor, ts, value, unit)`` tuples."""
    out = []
    for sensor, ts, value, *unit in rows:
        out.append(reading(sensor, ts, value, unit[0] if unit else None, prefix))
    return out


class Harness:
    """Module instances wired by topic as in the daemon, driven by a controllable clock.

    Build one with ``module_harness`` (one module) or ``pipeline_harness`` (a config file's
    modules). ``emitted`` holds every record any module emitted, in order; ``counters``,
    ``state`` and ``context`` reach into the first module (or the one named).
    """

    def __init__(
        self,
        plans: Sequence[ModulePlan],
        *,
        clock: ManualClock | None = None,
        follow_readings: bool = True,
        strict: bool = True,
        states: Mapping[str, MutableMapping[str, Any]] | None = None,
        on_emit: Callable[[Record], None] | None = None,
        keep: bool = True,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.clock = clock or ManualClock()
        self.follow_readings = follow_readings
        self.strict = strict
        self.emitted: list[Record] = []
        self.quarantined: list[Quarantined] = []
        self.start_errors: list[tuple[str, BaseException]] = []
        """Modules whose constructor or ``start`` raised (``strict=False``), with the error."""
        self._on_emit = on_emit
        self._keep = keep
        self._batch_size = batch_size
        states = states or {}
        self._stages = [
            _Stage(
                plan.spec.name, plan.cls, plan.config, tuple(plan.spec.inputs),
                HarnessContext(plan.spec.name, states.get(plan.spec.name, {}), self.clock),
            )
            for plan in upstream_first(list(plans))
        ]
        self._by_name = {stage.name: stage for stage in self._stages}
        self._routes: dict[str, tuple[_Stage, ...]] = {}
        self._runner: asyncio.Runner | None = None

    # -- looking inside --------------------------------------------------------------------

    def context(self, name: str | None = None) -> HarnessContext:
        """The context of module ``name`` (the first module by default)."""
        return self._stage(name).context

    def module(self, name: str | None = None) -> Module[Any]:
        stage = self._stage(name)
        if stage.module is None:
            raise RuntimeError(f"module {stage.name!r} is not started")
        return stage.module

    @property
    def counters(self) -> RecordingCounters:
        """The first module's counters; ``context(name).counters`` for another's."""
        return self._stage(None).context.counters

    @property
    def state(self) -> MutableMapping[str, Any]:
        return self._stage(None).context.state

    def emitted_by(self, name: str) -> list[Record]:
        return [record for record in self.emitted if record.topic == name]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Harness:
        """Start every module, downstream first as the daemon does."""
        self._run_sync(self.astart())
        return self

    async def astart(self) -> Harness:
        for stage in reversed(self._stages):
            await self._start_stage(stage)
        return self

    def stop(self) -> list[Record]:
        """Stop every module upstream first, routing what they flush; returns what was emitted
        meanwhile. Stopping twice does nothing."""
        stopped: list[Record] = self._run_sync(self.astop())
        return stopped

    async def astop(self) -> list[Record]:
        mark = len(self.emitted)
        for stage in self._stages:
            if stage.stopped:
                continue
            stage.stopped = True
            await self._hook(stage, "stop", stage.module.stop if stage.module else None)
            self._collect(stage)
            self._drain()
        return self.emitted[mark:]

    def restart(self, name: str | None = None) -> list[Record]:
        """Stop module ``name``, then start a new instance of it with its saved state, as the
        daemon does after a restart: the state goes through JSON on the way, as it would."""
        flushed: list[Record] = self._run_sync(self.arestart(name))
        return flushed

    async def arestart(self, name: str | None = None) -> list[Record]:
        stage = self._stage(name)
        mark = len(self.emitted)
        if not stage.stopped:
            stage.stopped = True
            await self._hook(stage, "stop", stage.module.stop if stage.module else None)
            self._collect(stage)
            self._drain()
        saved = json.loads(json.dumps(dict(stage.context.state), allow_nan=False))
        stage.context.state.clear()
        stage.context.state.update(saved)
        await self._start_stage(stage)
        return self.emitted[mark:]

    def close(self) -> None:
        """Stop what is still running and release the event loop."""
        if any(not stage.stopped for stage in self._stages):
            self.stop()
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- driving ---------------------------------------------------------------------------

    def run(self, records: Iterable[Record]) -> list[Record]:
        """Feed ``records``, then stop: everything emitted, including what ``stop`` flushed."""
        mark = len(self.emitted)
        self.feed(records)
        self.stop()
        return self.emitted[mark:]

    def feed(self, records: Iterable[Record]) -> list[Record]:
        """Process ``records`` in order, in batches; returns what was emitted meanwhile.

        With ``follow_readings`` the clock moves up to each record's time and modules are
        ticked as it passes their next tick, between batches, as in replay.
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
                        self._dispatch(pending)
                        pending = []
                    clock.now = ts
                    self._tick_due()
                    due = self._next_due()
                else:
                    clock.now = ts
            pending.append(record)
            if len(pending) >= size:
                self._dispatch(pending)
                pending = []
        if pending:
            self._dispatch(pending)
        return self.emitted[mark:]

    def advance(self, seconds: float, step: float | None = None) -> list[Record]:
        """Move the clock forward, ticking modules whose tick is due: once at the end, or at
        every ``step`` on the way. Returns what was emitted meanwhile."""
        return self.advance_to(self.clock.now + seconds, step)

    def advance_to(self, when: float, step: float | None = None) -> list[Record]:
        mark = len(self.emitted)
        if step is not None and step > 0:
            while self.clock.now + step < when:
                self.clock.now += step
                self._tick_due()
        self.clock.now = max(self.clock.now, when)
        self._tick_due()
        return self.emitted[mark:]

    def tick(self, name: str | None = None) -> list[Record]:
        """Tick every module (or the one named) now, due or not."""
        mark = len(self.emitted)
        for stage in self._stages if name is None else [self._stage(name)]:
            self._tick_stage(stage)
        return self.emitted[mark:]

    # -- internals -------------------------------------------------------------------------

    def _stage(self, name: str | None) -> _Stage:
        if name is None:
            return self._stages[0]
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no module named {name!r} in this harness") from None

    async def _start_stage(self, stage: _Stage) -> None:
        try:
            stage.module = stage.cls(stage.config, stage.context)
            await stage.module.start()
        except Exception as exc:
            stage.module = None
            stage.context.counters.incr("errors")
            self.start_errors.append((stage.name, exc))
            if self.strict:
                raise
            return  # as in the daemon: a module that did not start gets nothing
        stage.stopped = False
        stage.next_tick = self.clock.now + stage.cls.tick_interval
        self._collect(stage)
        self._drain()

    async def _hook(self, stage: _Stage, hook: str, fn: Callable[[], Any] | None) -> None:
        if fn is None:
            return
        try:
            await fn()
        except Exception as exc:
            self._failed(stage, hook, None, exc)

    def _run_sync(self, coro: Any) -> Any:
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

    def _next_due(self) -> float:
        return min((stage.next_tick for stage in self._stages if not stage.stopped),
                   default=float("inf"))

    def _tick_due(self) -> None:
        now = self.clock.now
        for stage in self._stages:
            if not stage.stopped and now >= stage.next_tick:
                self._tick_stage(stage)

    def _tick_stage(self, stage: _Stage) -> None:
        if stage.stopped or stage.module is None:
            return
        now = self.clock.now
        stage.next_tick = now + stage.cls.tick_interval
        try:
            stage.module.tick(now)
        except Exception as exc:
            self._failed(stage, "tick", None, exc)
        self._collect(stage)
        self._drain()

    def _dispatch(self, records: list[Record]) -> None:
        """Route records from outside (the sources) and everything they cause downstream."""
        self._route(records, None)
        self._drain()

    def _drain(self) -> None:
        for _ in range(_MAX_ROUNDS):
            busy = False
            for stage in self._stages:
                if stage.inbox:
                    busy = True
                    batch, stage.inbox = stage.inbox, []
                    self._process(stage, batch)
                    self._collect(stage)
            if not busy:
                return
        names = [stage.name for stage in self._stages if stage.inbox]
        raise RuntimeError(f"records keep cycling between modules {names}: check their inputs")

    def _process(self, stage: _Stage, batch: list[Record]) -> None:
        module = stage.module
        if stage.stopped or module is None:
            stage.context.counters.incr("dropped_not_running", len(batch))
            return
        if stage.batched:
            try:
                module.process_batch(batch)
            except Exception as exc:
                for record in batch:  # as the daemon does: the whole batch is quarantined
                    self._failed(stage, "process_batch", record, exc)
            return
        process = module.process
        for record in batch:
            try:
                process(record)
            except Exception as exc:
                self._failed(stage, "process", record, exc)

    def _failed(self, stage: _Stage, hook: str, record: Record | None, exc: Exception) -> None:
        stage.context.counters.incr("errors")
        self.quarantined.append(Quarantined(stage.name, hook, record, exc))
        if self.strict:
            raise exc
        if record is not None:
            stage.context.counters.incr("quarantined")

    def _collect(self, stage: _Stage) -> None:
        out = stage.context.out
        if not out:
            return
        stage.context.out = []
        if self._keep:
            self.emitted += out
        if self._on_emit is not None:
            for record in out:
                self._on_emit(record)
        self._route(out, stage)

    def _route(self, records: list[Record], sender: _Stage | None) -> None:
        routes = self._routes
        for record in records:
            destinations = routes.get(record.topic)
            if destinations is None:
                destinations = routes[record.topic] = tuple(
                    stage for stage in self._stages
                    if any(matches(f, record.topic) for f in stage.inputs)
                )
            for stage in destinations:
                if stage is not sender:  # a module never receives its own output
                    stage.inbox.append(record)


def _plan(
    module: str | type[Module[Any]],
    config: ModuleConfig | Mapping[str, Any] | None,
    options: Mapping[str, Any],
    name: str | None,
    inputs: Sequence[str],
) -> ModulePlan:
    from agent.config import ModuleSpec

    cls = resolve_module(module) if isinstance(module, str) else module
    if isinstance(config, ModuleConfig):
        if options:
            raise TypeError("pass a Config object or keyword options, not both")
        validated = config
    else:
        validated = cls.Config.model_validate({**(config or {}), **options})
    default_name = module if isinstance(module, str) and ":" not in module else cls.__name__.lower()
    spec = ModuleSpec.model_validate(
        {"name": name or default_name, "use": cls.__name__, "inputs": list(inputs)}
    )
    return ModulePlan(spec=spec, cls=cls, config=validated)


def module_harness(
    module: str | type[Module[Any]],
    config: ModuleConfig | Mapping[str, Any] | None = None,
    /,
    *,
    name: str | None = None,
    inputs: Sequence[str] = ("#",),
    state: MutableMapping[str, Any] | None = None,
    start_at: float = 0.0,
    follow_readings: bool = True,
    strict: bool = True,
    keep: bool = True,
    **options: Any,
) -> Harness:
    """A started harness around one module.

    ``module`` is a class or a registered name (``"window"``); its config comes from ``config``
    (a dict or a ``Config``) or keyword ``options`` and is validated as the daemon would.
    ``state`` is the saved state the module starts with; ``start_at`` is the clock's start;
    ``keep=False`` does not keep what is emitted (``feed`` then returns nothing), for long runs.
    """
    plan = _plan(module, config, options, name, inputs)
    harness = Harness(
        [plan], clock=ManualClock(start_at), follow_readings=follow_readings, strict=strict,
        states={plan.spec.name: state if state is not None else {}}, keep=keep,
    )
    return harness.start()


def pipeline_harness(
    config: str | Path | LoadedConfig,
    *,
    start_at: float = 0.0,
    strict: bool = True,
    on_emit: Callable[[Record], None] | None = None,
    keep: bool = True,
) -> Harness:
    """A started harness around every module of an agent config (a path or ``load_config``'s
    result); sources, outbox and sync are left out."""
    loaded = config if isinstance(config, LoadedConfig) else load_config(config)
    harness = Harness(
        loaded.modules, clock=ManualClock(start_at), strict=strict, on_emit=on_emit, keep=keep
    )
    return harness.start()


__all__ = [
    "Harness",
    "HarnessContext",
    "ManualClock",
    "Quarantined",
    "RecordingCounters",
    "module_harness",
    "pipeline_harness",
    "reading",
    "readings",
]

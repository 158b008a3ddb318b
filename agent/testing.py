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
counted, processing goes on, and a module that keeps failing is restarted.

The harness runs modules through the daemon's own rules (``agent.runtime.instance``, with the
context of ``agent.runtime.context``) on the stepping engine ``agent.runtime.stepper`` that
``edge-agent replay`` uses too: what passes here behaves the same in the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from agent.api import Module, ModuleConfig, Record
from agent.config import LoadedConfig, ModulePlan, load_config
from agent.registry import resolve_module
from agent.runtime.context import ModuleContext
from agent.runtime.stepper import (
    BATCH_SIZE,
    ManualClock,
    Quarantined,
    RecordingCounters,
    Stepper,
)

HarnessContext = ModuleContext
"""The context a module gets in the harness: the daemon's own."""


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
        self.stepper = Stepper(
            plans, clock=clock, follow_readings=follow_readings, strict=strict, states=states,
            on_emit=on_emit, keep=keep, batch_size=batch_size,
        )
        self.clock = self.stepper.clock
        self.emitted = self.stepper.emitted
        self.quarantined = self.stepper.quarantined
        """Records a module raised on (``strict=False``), and errors of its other hooks."""
        self.start_errors = self.stepper.start_errors
        """Modules whose constructor or ``start`` raised (``strict=False``), with the error."""
        self.dropped = self.stepper.dropped
        """Records a module did not get because it was not running, by reason."""

    @property
    def strict(self) -> bool:
        return self.stepper.strict

    @property
    def follow_readings(self) -> bool:
        return self.stepper.follow_readings

    # -- looking inside --------------------------------------------------------------------

    def context(self, name: str | None = None) -> ModuleContext:
        """The context of module ``name`` (the first module by default)."""
        return self.stepper.stage(name).context

    def module(self, name: str | None = None) -> Module[Any]:
        instance = self.stepper.stage(name).instance
        if not instance.running:
            raise RuntimeError(f"module {instance.name!r} is not started")
        return instance.module

    @property
    def counters(self) -> RecordingCounters:
        """The first module's counters (what it counted, and its errors, quarantined records
        and restarts); ``context(name).counters`` for another's."""
        return self.stepper.stage(None).counters

    def totals(self, name: str | None = None) -> dict[str, int]:
        """Every count of a module as the daemon's status shows it: its own counters plus
        ``processed``, ``emitted``, ``errors``, ``quarantined``..."""
        return dict(self.stepper.stage(name).totals.values)

    @property
    def state(self) -> MutableMapping[str, Any]:
        return self.stepper.stage(None).context.state

    def emitted_by(self, name: str) -> list[Record]:
        return [record for record in self.emitted if record.topic == name]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Harness:
        """Start every module, downstream first as the daemon does."""
        self.stepper.run(self.stepper.astart())
        return self

    async def astart(self) -> Harness:
        await self.stepper.astart()
        return self

    def stop(self) -> list[Record]:
        """Stop every module upstream first, routing what they flush; returns what was emitted
        meanwhile. Stopping twice does nothing."""
        return self.stepper.run(self.stepper.astop())

    async def astop(self) -> list[Record]:
        return await self.stepper.astop()

    def restart(self, name: str | None = None) -> list[Record]:
        """Stop module ``name``, then start a new instance of it with its saved state, as the
        daemon does after a restart: the state goes through JSON on the way, as it would."""
        return self.stepper.run(self.stepper.arestart(name))

    async def arestart(self, name: str | None = None) -> list[Record]:
        return await self.stepper.arestart(name)

    def close(self) -> None:
        """Stop what is still running and release the event loop."""
        self.stepper.close()

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
        return self.stepper.run(self.stepper.afeed(records))

    async def afeed(self, records: Iterable[Record]) -> list[Record]:
        return await self.stepper.afeed(records)

    def advance(self, seconds: float, step: float | None = None) -> list[Record]:
        """Move the clock forward, ticking modules whose tick is due: once at the end, or at
        every ``step`` on the way. Returns what was emitted meanwhile."""
        return self.advance_to(self.clock.now + seconds, step)

    def advance_to(self, when: float, step: float | None = None) -> list[Record]:
        return self.stepper.run(self.stepper.aadvance_to(when, step))

    def tick(self, name: str | None = None) -> list[Record]:
        """Tick every module (or the one named) now, due or not."""
        return self.stepper.run(self.stepper.atick(name))


def _plan(
    module: str | type[Module[Any]],
    config: ModuleConfig | Mapping[str, Any] | None,
    options: Mapping[str, Any],
    name: str | None,
    inputs: Sequence[str] | Mapping[str, str],
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
        {"name": name or default_name, "use": cls.__name__,
         "inputs": dict(inputs) if isinstance(inputs, Mapping) else list(inputs)}
    )
    return ModulePlan(spec=spec, cls=cls, config=validated)


def module_harness(
    module: str | type[Module[Any]],
    config: ModuleConfig | Mapping[str, Any] | None = None,
    /,
    *,
    name: str | None = None,
    inputs: Sequence[str] | Mapping[str, str] = ("#",),
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

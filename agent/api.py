"""The module and source APIs: everything a plugin writer sees, and what the runtime promises.

Modules
-------

A module is one class. It declares a nested pydantic ``Config`` for its ``[modules.with]`` table,
reads records from the topics its instance is configured with, and emits records through its
context. The runtime guarantees, for every module instance:

* ``start`` is awaited once, before the first ``process``; if it raises, the module is not run.
* ``process`` (or ``process_batch``) is never called concurrently for one instance, and neither
  is ``tick``: a module needs no locks for its own state.
* ``tick`` is called about every ``tick_interval`` seconds with the context clock's time; use it
  to close windows or send heartbeats when no records arrive.
* ``stop`` is awaited once, after the last ``process`` and ``tick``; emit what is still open there
  (the runtime commits it before the process exits).
* Time comes from ``context.clock()``: wall time in the daemon, a controlled clock in the harness
  and in replay. Never call ``time.time()`` in a module.
* An exception out of ``process`` is logged with the module's name and counted, the record that
  caused it is quarantined, and the next record is processed as usual. A module that keeps
  failing is restarted (``stop``, a new instance, ``start``) with a growing delay.
* What the module emits is routed on the bus under the module instance's name (an output named
  in ``outputs`` goes on ``<name>.<output>``); a stream marked ``sync`` is committed to the
  outbox and reaches the cloud exactly once.
* ``process`` and ``process_batch`` may be ``async def``: while one awaits I/O, the other
  modules and the sources run. Blocking calls go through ``context.run_blocking``. Records a
  module has taken and not finished when the agent stops are finished within the stop budget,
  or quarantined and counted as ``abandoned``; none is dropped silently.
* ``context.every`` calls a function at a fixed interval of the monotonic clock, never
  concurrently with the module's other hooks, and unmoved by wall-clock jumps.
* A module that implements ``checkpoint`` and ``restore`` survives a crash of the agent exactly:
  its checkpoint commits in the same transaction as what it emitted, and after a crash it is
  restored from there while the readings it had not yet checkpointed come again from the broker
  (docs/design/004-checkpoints.md). A module without them restarts from ``context.state``.

Sources
-------
A source is one class too: it turns the outside world (a broker, a fieldbus, a file, a command)
into readings. It declares a nested ``Config`` (a ``SourceConfig``: the ``[[sources]]`` entry,
whose ``type`` names the source) and overrides ``run``. The runtime guarantees, for every
source instance:

* ``run`` is awaited once and cancelled when the source is stopped (a reload that changes its
  entry, or shutdown, which stops sources before modules flush). ``stop`` is awaited once after
  ``run`` has ended, however it ended; close what ``run`` opened there.
* An exception out of ``run`` (the device is gone, the port cannot be opened) is logged with the
  source's name, shown as its ``last_error`` in status, counted as a restart, and a **new
  instance** is started after a capped, jittered delay (1 s doubling up to 60 s; back to 1 s
  once an instance has run well for a minute). It never stops the other sources. Returning from
  ``run`` ends the source for good.
* Readings go to the bus through the context: ``context.reading`` makes one (the same record
  shape the MQTT source makes: topic ``<topic_prefix><sensor>``, data ``sensor``, ``value``,
  ``unit``), refusing and counting a value that is not a finite number or a bad time, and
  ``context.publish`` hands a batch on. ``publish`` returns only when the bus has room again:
  a stream simply reads nothing meanwhile. A poller uses ``context.ticks(interval)``, which
  skips (and counts as ``skipped_polls``) the polls that fall due while the bus is full.
* Counters: ``received`` and ``accepted`` are kept by the context; ``context.reject`` counts a
  dropped input by reason (in ``dropped`` of status and in the source's own figures);
  ``context.fault`` counts a device or link fault by reason (``timeout``, ``crc``...) under
  ``errors``. Both log the first of each kind, then at most one line per 10 s.
* Health: ``context.report_ok()`` once the device answers, ``context.report_error(text)`` when it
  does not; status shows ``connected`` and ``last_error`` per source.
* ``run`` runs on the agent's event loop: blocking calls (a file read on a slow bus, a vendor
  library) go through ``asyncio.to_thread``.
* A source whose input can be read again from a place (a file and an offset) may implement
  ``checkpoint`` and ``restore`` to resume exactly there. ``checkpoint`` is called between two
  steps of the loop, at every outbox commit, so the place it returns must be just after the
  last reading it published; it is saved in the same transaction as the modules' state and
  queued readings, and after a stop or a crash of the agent (or of the source: a new instance)
  ``restore`` hands it back before ``run``: nothing is read twice or skipped. ``pause`` is
  called before the last commit of a stop: publish nothing after it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from agent.units import Name

T = TypeVar("T")


class Record(NamedTuple):
    """One item on the bus.

    Sensor readings arrive as ``Record("sensors/t1", ts, {"sensor": "t1", "value": 21.5})``
    (plus ``"unit"`` when the sensor sent one). What a module emits arrives as
    ``Record(<module name>, ts, data)``.
    """

    topic: str
    ts: float
    """Unix seconds: when the reading was taken, or the time a module gave its output."""
    data: dict[str, Any]

    @property
    def input(self) -> str | None:
        """The named input (``inputs = {temp = "..."}``) the record came through; None for a
        module whose ``inputs`` is a list."""
        return None


class ModuleConfig(BaseModel):
    """Base for a module's ``Config``: unknown keys are refused, so a typo is an error."""

    # defer_build: a nested section is validated inside its parent and never needs a validator
    # (and serializer) of its own, which would stay in the daemon's memory for nothing.
    # use_attribute_docstrings: a field's docstring is its description, shown by
    # ``edge-agent modules`` and in the JSON schema.
    model_config = ConfigDict(
        extra="forbid", frozen=True, defer_build=True, use_attribute_docstrings=True
    )


class Counters(Protocol):
    def incr(self, name: str, by: int = 1) -> None:
        """Add to a named counter; counters show in ``edge-agent status``."""


class Context(Protocol):
    """What the runtime hands a module instance."""

    @property
    def name(self) -> str:
        """The instance name from the config; also the stream name of what it emits."""

    @property
    def log(self) -> logging.Logger:
        """A child logger named after the instance."""

    @property
    def state(self) -> MutableMapping[str, Any]:
        """Persistent JSON-serialisable state, saved every few seconds and at shutdown, and
        restored on the next start of the same instance name."""

    @property
    def counters(self) -> Counters:
        """Named counters of this instance, shown by ``edge-agent status``."""

    @property
    def inputs(self) -> tuple[str, ...]:
        """The names of the instance's named inputs, in config order (empty for a list)."""

    def clock(self) -> float:
        """Now, in Unix seconds."""

    def emit(self, data: dict[str, Any], ts: float | None = None, output: str | None = None) -> None:
        """Emit one record on this module's stream; ``ts`` defaults to ``clock()``. ``output``
        (one of the module's ``outputs``) emits on the stream ``<name>.<output>`` instead."""

    def run_blocking(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        """Run a blocking call (a request, a lookup, a device read) on this module's own small
        thread pool; await the result in an ``async def`` hook."""

    def every(self, interval: float, fn: Callable[[], object]) -> Timer:
        """Call ``fn`` every ``interval`` seconds of the monotonic clock (an ``async def`` too),
        first ``interval`` from now; the other hooks are never running meanwhile."""


class Timer(Protocol):
    def cancel(self) -> None:
        """No more calls."""


ConfigT = TypeVar("ConfigT", bound=ModuleConfig)


class Module(Generic[ConfigT]):
    """Base class of every processing module.

    A subclass sets ``Config`` (a ``ModuleConfig``) and ``description``, and overrides
    ``process``; the other hooks are optional.
    """

    Config: ClassVar[type[ModuleConfig]] = ModuleConfig
    description: ClassVar[str] = ""
    tick_interval: ClassVar[float] = 1.0
    outputs: ClassVar[tuple[str, ...]] = ()
    """Named outputs besides the default one: ``emit(..., output="alerts")`` goes on the stream
    ``<instance name>.alerts``, which other modules read and ``sync`` can select by name."""

    def __init__(self, config: ConfigT, context: Context) -> None:
        self.config = config
        self.context = context

    async def start(self) -> None:
        """Open resources, restore state from ``context.state``."""

    def process(self, record: Record) -> Awaitable[None] | None:
        """Handle one record; call ``context.emit`` for any output. May be ``async def``."""
        raise NotImplementedError

    def process_batch(self, records: Iterable[Record]) -> Awaitable[None] | None:
        """Handle records in arrival order. Override only to vectorise; the runtime falls back
        to ``process`` per record when a batch raises, so it can quarantine the culprit."""
        process = self.process
        for record in records:
            process(record)
        return None

    def tick(self, now: float) -> None:
        """Time passes with no record: flush what is due at ``now``."""

    async def stop(self) -> None:
        """Emit what is still open, save state, close resources."""

    def checkpoint(self) -> dict[str, Any] | None:
        """What changed in the module's state since the last call, by key, as JSON values
        (``None`` forgets a key); ``None`` if the module keeps no checkpoint. Called between
        steps, right before each outbox commit: return only what changed, so a commit costs
        what the last fraction of a second touched, not everything the module holds."""
        return None

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Called once, after ``start`` and before the first ``process``, with every key the
        last committed checkpoint held (only when there is one)."""


ModuleFactory = Callable[[ModuleConfig, Context], Module[Any]]


class SourceConfig(BaseModel):
    """Base for a source's ``Config``: one ``[[sources]]`` entry. Unknown keys are refused.

    A subclass adds its own keys; a ``topic_prefix`` key, if it has one, sets the topic prefix of
    the readings ``context.reading`` makes (``sensors/`` otherwise)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    type: str
    """The registered source name (``modbus``, ``sysfs``...) or ``path/to/file.py:Class``."""
    name: Name
    """The instance name: it names the source in status, metrics and logs."""


class SourceContext(Protocol):
    """What the runtime hands a source instance."""

    @property
    def name(self) -> str:
        """The instance name from the config."""

    @property
    def device_id(self) -> str:
        """The gateway's ``device_id``."""

    @property
    def log(self) -> logging.Logger:
        """A child logger named after the instance."""

    @property
    def counters(self) -> Counters:
        """Named counters of this instance, shown by ``edge-agent status``."""

    @property
    def paused(self) -> bool:
        """True while the bus is full: a poller should not poll."""

    @property
    def data_dir(self) -> Path | None:
        """A folder in the agent's data directory (it may not exist yet) where a source keeps
        what it remembers across restarts, in files named after its instance; None in tests."""

    @property
    def max_clock_skew(self) -> float:
        """Seconds a reading time may be ahead of the gateway's clock (``max_clock_skew``):
        ``reading`` refuses later times as ``bad_ts``."""

    def clock(self) -> float:
        """Now, in Unix seconds."""

    def reading(
        self, sensor: str, value: Any, ts: float | None = None, unit: str | None = None
    ) -> Record | None:
        """One reading of ``sensor`` (``ts`` defaults to now), or None when it is refused (a
        value that is not a finite number, a time before 1970 or more than ``max_clock_skew``
        ahead): refusals are counted by reason. Each call counts as one ``received``."""

    def reject(self, reason: str, detail: str = "", count: int = 1, received: bool = True) -> None:
        """Count ``count`` inputs that were not readings, by ``reason``, as ``received`` (unless
        the source counts those itself) and not ``accepted``; log the first of each kind with
        ``detail`` (nothing is logged without one)."""

    def fault(self, reason: str, detail: str = "") -> None:
        """Count one device or link fault, by ``reason``; log the first of each kind."""

    def report_ok(self) -> None:
        """The device answers: status shows the source connected, with no error."""

    def report_error(self, error: str) -> None:
        """The device does not answer: status shows the source disconnected, with ``error``."""

    async def publish(self, records: list[Record]) -> None:
        """Hand readings to the bus (counted as ``accepted``); returns once the bus has room for
        more."""

    def publish_nowait(self, records: list[Record]) -> bool:
        """Hand readings to the bus without waiting; True when it is now full (the caller stops
        reading until ``wait_room`` returns)."""

    async def wait_room(self) -> None:
        """Return once the bus has room again."""

    def ticks(self, interval: float) -> AsyncIterator[float]:
        """Yield the wall time every ``interval`` seconds, on a fixed schedule; a tick that falls
        due while the bus is full, or while the previous poll still runs, is skipped and counted
        (``skipped_polls``)."""


SourceConfigT = TypeVar("SourceConfigT", bound=SourceConfig)


class Source(Generic[SourceConfigT]):
    """Base class of every source: set ``Config`` and ``description``, override ``run``."""

    Config: ClassVar[type[SourceConfig]] = SourceConfig
    description: ClassVar[str] = ""

    def __init__(self, config: SourceConfigT, context: SourceContext) -> None:
        self.config = config
        self.context = context

    async def run(self) -> None:
        """Read until cancelled; raise when the device is lost (a new instance is started)."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Close what ``run`` opened; awaited once, after ``run`` ended."""

    def checkpoint(self) -> Any:
        """Where the source is in its input, as a JSON value (None: nowhere to resume from);
        saved when it differs from the last one saved."""
        return None

    def restore(self, saved: Any) -> None:
        """Called once, before ``run``, with the last checkpoint saved for this instance name."""

    def pause(self) -> None:
        """The agent stops: take no more input (the last checkpoint is taken next)."""


__all__ = [
    "Context",
    "Counters",
    "Module",
    "ModuleConfig",
    "Record",
    "Source",
    "SourceConfig",
    "SourceContext",
    "Timer",
]

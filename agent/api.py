"""The module API: everything a module writer sees, and what the runtime promises them.

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
* What the module emits is routed on the bus under the module instance's name; if that stream is
  marked ``sync``, it is committed to the outbox and reaches the cloud exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict


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


class ModuleConfig(BaseModel):
    """Base for a module's ``Config``: unknown keys are refused, so a typo is an error."""

    # defer_build: a nested section is validated inside its parent and never needs a validator
    # (and serializer) of its own, which would stay in the daemon's memory for nothing.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


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

    def clock(self) -> float:
        """Now, in Unix seconds."""

    def emit(self, data: dict[str, Any], ts: float | None = None) -> None:
        """Emit one record on this module's stream; ``ts`` defaults to ``clock()``."""


ConfigT = TypeVar("ConfigT", bound=ModuleConfig)


class Module(Generic[ConfigT]):
    """Base class of every processing module.

    A subclass sets ``Config`` (a ``ModuleConfig``) and ``description``, and overrides
    ``process``; the other hooks are optional.
    """

    Config: ClassVar[type[ModuleConfig]] = ModuleConfig
    description: ClassVar[str] = ""
    tick_interval: ClassVar[float] = 1.0

    def __init__(self, config: ConfigT, context: Context) -> None:
        self.config = config
        self.context = context

    async def start(self) -> None:
        """Open resources, restore state from ``context.state``."""

    def process(self, record: Record) -> None:
        """Handle one record; call ``context.emit`` for any output."""
        raise NotImplementedError

    def process_batch(self, records: Iterable[Record]) -> None:
        """Handle records in arrival order. Override only to vectorise; the runtime falls back
        to ``process`` per record when a batch raises, so it can quarantine the culprit."""
        process = self.process
        for record in records:
            process(record)

    def tick(self, now: float) -> None:
        """Time passes with no record: flush what is due at ``now``."""

    async def stop(self) -> None:
        """Emit what is still open, save state, close resources."""


ModuleFactory = Callable[[ModuleConfig, Context], Module[Any]]

__all__ = ["Context", "Counters", "Module", "ModuleConfig", "Record"]

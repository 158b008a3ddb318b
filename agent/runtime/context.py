"""The one module context: what a module instance gets as ``self.context`` in the daemon, in the
harness and in replay alike, so that a module behaves the same wherever it runs.

It checks what a module emits as the module emits it (a wrong argument raises in the module's
own step, where its traceback points at the culprit) and keeps the records until the runtime
takes them with ``take``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, MutableMapping
from typing import Any

from agent.api import Counters, Record

log = logging.getLogger("agent.modules")
_INF = math.inf


class ModuleContext:
    """The ``agent.api.Context`` handed to a module instance."""

    def __init__(
        self,
        name: str,
        state: MutableMapping[str, Any],
        counters: Counters,
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
        if ts is None:
            ts = self.clock()
        elif type(ts) is not float or not -_INF < ts < _INF:  # the common case costs one test
            ts = _timestamp(ts)
        self.out.append(Record(self.name, ts, data))

    def take(self) -> list[Record]:
        """What was emitted since the last ``take``, in order."""
        out = self.out
        if out:
            self.out = []
        return out


def _timestamp(ts: Any) -> float:
    if isinstance(ts, str | bytes | bool):  # float() would take "1.5"; True is no time either
        raise TypeError(f"emit's ts must be Unix seconds (a number), not {type(ts).__name__}")
    value = float(ts)  # numpy scalars too
    if not math.isfinite(value):
        raise ValueError(f"emit's ts must be a finite number, not {value}")
    return value

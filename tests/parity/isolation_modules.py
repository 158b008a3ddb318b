"""Modules that misbehave in ways only a process of their own survives: run isolated
(``isolation = "process"``) by tests/test_module_isolation.py. A reading whose value is 13
sets each one off; every other reading is passed through."""

from __future__ import annotations

import os
import time

from agent.api import Module, ModuleConfig, Record

TRIGGER = 13.0


class Crasher(Module[ModuleConfig]):
    """Aborts the interpreter (SIGABRT, as a segfaulting C extension would end it)."""

    def process(self, record: Record) -> None:
        if record.data["value"] == TRIGGER:
            os.abort()
        self.context.emit(record.data, ts=record.ts)


class Leaker(Module[ModuleConfig]):
    """Holds on to memory it never gives back: 256 MB for each trigger."""

    async def start(self) -> None:
        self.hoard: list[bytes] = []

    def process(self, record: Record) -> None:
        if record.data["value"] == TRIGGER:
            self.hoard.append(os.urandom(1) * (256 << 20))
        self.context.emit(record.data, ts=record.ts)


class Hanger(Module[ModuleConfig]):
    """Blocks for good, as a call with no timeout on a dead peer does."""

    def process(self, record: Record) -> None:
        if record.data["value"] == TRIGGER:
            time.sleep(3600)
        self.context.emit(record.data, ts=record.ts)


class Pass(Module[ModuleConfig]):
    """Passes each reading on: the cost of the pipe alone."""

    def process(self, record: Record) -> None:
        self.context.emit(record.data, ts=record.ts)

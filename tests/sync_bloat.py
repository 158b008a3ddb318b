"""A test module whose output is sometimes far larger than the cloud broker accepts."""

from __future__ import annotations

import os

from agent import Module, ModuleConfig, Record


class BloatConfig(ModuleConfig):
    every: int = 100
    """One record in this many readings is emitted, with ``size`` bytes of incompressible hex."""
    size: int = 12_000


class Bloat(Module[BloatConfig]):
    Config = BloatConfig
    description = "Emits an oversized record now and then (tests only)."

    def __init__(self, config: BloatConfig, context: object) -> None:
        super().__init__(config, context)  # type: ignore[arg-type]
        self.seen = 0

    def process(self, record: Record) -> None:
        self.seen += 1
        if self.seen % self.config.every == 0:
            self.context.emit({"blob": os.urandom(self.config.size // 2).hex()}, record.ts)

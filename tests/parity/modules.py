"""Modules that exercise the runtime's rules, run alike through the daemon and the harness."""

from __future__ import annotations

from typing import Any

from agent.api import Module, ModuleConfig, Record


class Doubler(Module[ModuleConfig]):
    """Emits each value doubled at the reading's time; raises on a negative value, and calls
    ``emit`` wrongly on 7 (a list) and on 8 (a text time)."""

    def process(self, record: Record) -> None:
        value = record.data["value"]
        if value < 0:
            raise ValueError("negative reading")
        if value == 7:
            self.context.emit([value])  # type: ignore[arg-type]  # wrong on purpose
        if value == 8:
            self.context.emit({"sensor": record.data["sensor"]}, ts="soon")  # type: ignore[arg-type]
        self.context.emit({"sensor": record.data["sensor"], "value": 2 * value}, ts=record.ts)


class Tally(Module[ModuleConfig]):
    """Counts readings per sensor in its state (so across restarts) and emits the running count;
    at stop it emits the totals, at the newest reading's time."""

    async def start(self) -> None:
        self.counts: dict[str, int] = dict(self.context.state.get("counts", {}))
        self.newest: float | None = self.context.state.get("newest")

    def process(self, record: Record) -> None:
        sensor = record.data["sensor"]
        self.counts[sensor] = self.counts.get(sensor, 0) + 1
        self.newest = record.ts
        self.context.state["counts"] = dict(self.counts)
        self.context.state["newest"] = record.ts
        self.context.counters.incr("seen")
        self.context.emit({"sensor": sensor, "n": self.counts[sensor]}, ts=record.ts)

    async def stop(self) -> None:
        if self.newest is not None:
            totals: dict[str, Any] = dict(self.counts)
            self.context.emit({"totals": totals}, ts=self.newest)

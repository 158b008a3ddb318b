"""Modules that do I/O, keep time and emit on several outputs: run through the daemon and the
harness by the tests of the second edition of the module API."""

from __future__ import annotations

import time

from agent.api import Module, ModuleConfig, Record


class SlowLookupConfig(ModuleConfig):
    delay: float = 0.2
    """Seconds each lookup blocks, standing for an HTTP request or a database query."""


class SlowLookup(Module[SlowLookupConfig]):
    """Enriches each reading with a blocking lookup, run on the module's own threads."""

    Config = SlowLookupConfig

    async def process(self, record: Record) -> None:
        looked_up = await self.context.run_blocking(self._lookup, record.data["sensor"])
        self.context.emit({**record.data, "site": looked_up}, ts=record.ts)

    def _lookup(self, sensor: str) -> str:
        time.sleep(self.config.delay)
        return f"site-of-{sensor}"


class BatchLookup(Module[ModuleConfig]):
    """The same as a vectorised ``async def process_batch``."""

    async def process_batch(self, records: list[Record]) -> None:  # type: ignore[override]
        sensors = await self.context.run_blocking(sorted, {r.data["sensor"] for r in records})
        for record in records:
            self.context.emit({"sensor": record.data["sensor"], "known": sensors}, ts=record.ts)


class Poller(Module[ModuleConfig]):
    """A producer (``inputs = []``): emits a numbered record every half second of the monotonic
    clock, at the wall time it has then."""

    async def start(self) -> None:
        self.polls = int(self.context.state.get("polls", 0))
        self.context.every(0.5, self.poll)

    def poll(self) -> None:
        self.polls += 1
        self.context.state["polls"] = self.polls
        self.context.emit({"poll": self.polls})

    def process(self, record: Record) -> None:
        raise AssertionError("a producer gets no records")


class Splitter(Module[ModuleConfig]):
    """Passes every reading on its own stream and a value above 10 on ``alerts`` too."""

    outputs = ("alerts",)

    def process(self, record: Record) -> None:
        self.context.emit(record.data, ts=record.ts)
        if record.data["value"] > 10:
            self.context.emit({"sensor": record.data["sensor"], "high": record.data["value"]},
                              ts=record.ts, output="alerts")
        if record.data["value"] == 13:
            self.context.emit({"oops": True}, output="alarms")  # not an output: raises


class Counter(Module[ModuleConfig]):
    """Counts what reaches it (the alerts of a ``Splitter``)."""

    def process(self, record: Record) -> None:
        self.context.counters.incr("seen")
        self.context.emit({"n": 1, "from": record.topic}, ts=record.ts)



class Stamp(Module[ModuleConfig]):
    """Notes when each window summary reached it, to measure how late summaries are."""

    def process(self, record: Record) -> None:
        self.context.emit({"end": record.data["end"], "at": time.time()}, ts=record.ts)


class Blocking(Module[ModuleConfig]):
    """What the I/O chapter says not to do: a blocking call right in ``process``."""

    def process(self, record: Record) -> None:
        time.sleep(1.0)
        self.context.emit(record.data, ts=record.ts)

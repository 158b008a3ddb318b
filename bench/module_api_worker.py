"""One process's measurements for ``bench_module_api``: readings per CPU-second of this process
(``time.process_time``: on a shared machine, wall-clock rates measure the neighbours) through
the daemon's module runner (``agent.runtime.module_runner``, in-process, no broker and no
outbox), for whichever ``agent`` package is first on the path. Run by the benchmark once against
this tree and once against an older revision, so that both figures come from the same run.

    python bench/module_api_worker.py CASE COUNT RUNS     # prints the rates as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from agent.api import Module, ModuleConfig, Record
from agent.bus import Bus
from agent.config import ModulePlan, ModuleSpec, SupervisorConfig
from agent.counters import CounterSet
from agent.registry import resolve_module
from agent.runtime.loopwatch import LoopWatch
from agent.runtime.module_runner import ModuleRunner

BATCH = 512


class PassThrough(Module[ModuleConfig]):
    def process(self, record: Record) -> None:
        self.context.emit(record.data, ts=record.ts)


class AsyncPassThrough(Module[ModuleConfig]):
    async def process(self, record: Record) -> None:  # type: ignore[override]
        self.context.emit(record.data, ts=record.ts)


def _plan(case: str) -> ModulePlan:
    if case == "window":
        cls: type[Module[Any]] = resolve_module("window")
        config = cls.Config.model_validate({"every": "60s", "stats": ["count", "mean", "min", "max"]})
    else:
        cls = AsyncPassThrough if case == "async" else PassThrough
        config = ModuleConfig()
    spec = ModuleSpec.model_validate({"name": "m", "use": "bench", "inputs": ["sensors/#"]})
    return ModulePlan(spec=spec, cls=cls, config=config)


def _readings(count: int) -> list[list[Record]]:
    records = [
        Record(f"sensors/s{i % 1000:04d}", 1_700_000_000.0 + i / 1000,
               {"sensor": f"s{i % 1000:04d}", "value": float(i % 97)})
        for i in range(count)
    ]
    return [records[i:i + BATCH] for i in range(0, count, BATCH)]


async def _once(case: str, batches: list[list[Record]]) -> float:
    counters = CounterSet()
    watch = LoopWatch(hang_timeout=60)
    runner = ModuleRunner(_plan(case), Bus(), None, counters, watch, SupervisorConfig(), state={})
    await runner.start()
    total = sum(len(batch) for batch in batches)
    started = time.process_time()
    task = asyncio.create_task(runner.run())
    for batch in batches:
        runner.queue.put_nowait(batch)
        if runner.queue.full:
            await runner.queue.wait_room()
    while counters.totals.get(("module:m", "processed"), 0) < total:
        await asyncio.sleep(0.001)
    elapsed = time.process_time() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await runner.finish()
    return total / elapsed


def main() -> None:
    case, count, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    batches = _readings(count)
    rates = [asyncio.run(_once(case, batches)) for _ in range(runs)]
    print(json.dumps(rates))


if __name__ == "__main__":
    main()

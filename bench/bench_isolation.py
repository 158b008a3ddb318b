"""The cost of ``isolation = "process"``: readings/s through the daemon's module runner with the
module in the daemon's process (``ModuleRunner``) and in a child process (``ProcessRunner``,
records over a pipe in batches), for a pass-through module and for ``window`` (4 stats, 1,000
sensors), in the same run. No broker, no outbox: the runner and the module alone.

Method: the four cases are run interleaved, 3 rounds (so that a busy moment of the machine hits
both sides alike), each figure the median of the rounds. Not pinned: the isolated side uses a
second core for the child, as it would on a gateway.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from agent.api import Module, ModuleConfig, Record
from agent.bus import Bus
from agent.config import ModulePlan, ModuleSpec, SupervisorConfig
from agent.counters import CounterSet
from agent.registry import resolve_module
from agent.runtime.loopwatch import LoopWatch
from agent.runtime.pipeline import runner_for
from bench.common import Result

BATCH = 512  # what the MQTT source hands on at a time
TARGET = 100_000  # an isolated window keeps at least this many readings/s


class PassThrough(Module[ModuleConfig]):
    def process(self, record: Record) -> None:
        self.context.emit(record.data, ts=record.ts)


def _plan(case: str, isolation: str) -> ModulePlan:
    if case == "window":
        cls: type[Module[Any]] = resolve_module("window")
        with_ = {"every": "60s", "stats": ["count", "mean", "min", "max"]}
    else:
        cls, with_ = PassThrough, {}
    spec = ModuleSpec.model_validate(
        {"name": "m", "use": "bench", "inputs": ["sensors/#"], "with": with_, "isolation": isolation}
    )
    return ModulePlan(spec=spec, cls=cls, config=cls.Config.model_validate(with_))


def _readings(count: int) -> list[list[Record]]:
    records = [
        Record(f"sensors/s{i % 1000:04d}", 1_700_000_000.0 + i / 1000,
               {"sensor": f"s{i % 1000:04d}", "value": float(i % 97)})
        for i in range(count)
    ]
    return [records[i:i + BATCH] for i in range(0, count, BATCH)]


async def _once(case: str, isolation: str, batches: list[list[Record]]) -> float:
    counters = CounterSet()
    plan = _plan(case, isolation)
    runner = runner_for(plan)(plan, Bus(), None, counters, LoopWatch(hang_timeout=60),
                              SupervisorConfig(hang_timeout=60), state={})
    await runner.start()
    total = sum(len(batch) for batch in batches)
    started = time.perf_counter()
    task = asyncio.create_task(runner.run())
    for batch in batches:
        runner.queue.put_nowait(batch)
        if runner.queue.full:
            await runner.queue.wait_room()
    while counters.totals.get(("module:m", "processed"), 0) < total:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await runner.finish()
    return total / elapsed


def run(quick: bool) -> list[Result]:
    count = 50_000 if quick else 300_000
    batches = _readings(count)
    cases = [(case, isolation) for case in ("pass", "window") for isolation in ("in-process", "process")]
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    for _ in range(3):
        for case, isolation in cases:
            samples[(case, isolation)].append(asyncio.run(_once(case, isolation, batches)))
    results = []
    for case, label in (("pass", "pass-through"), ("window", "window, 4 stats")):
        inside, apart = samples[(case, "in-process")], samples[(case, "process")]
        rate = statistics.median(apart)
        results.append(Result(
            "isolation", f"{label}, isolation = process: readings/s", rate, "readings/s",
            baseline_name="in-process", baseline=statistics.median(inside), runs=apart,
            baseline_runs=inside,
            target=f">= {TARGET:,}" if case == "window" else "",
            met=rate >= TARGET if case == "window" else None,
            note=f"module runner alone, {count:,} readings, 1,000 sensors, batches of {BATCH}",
        ))
    return results


if __name__ == "__main__":
    for result in run(quick=True):
        print(result)

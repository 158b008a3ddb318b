"""One process's measurements for ``bench_sources``: JSON lines through the whole daemon path
(the ``tail`` or ``exec`` source, the bus, the module runner, a 60 s ``window`` with ``sync``,
the committer and the SQLite outbox, checkpoints included), for whichever ``agent`` package is
first on the path. The benchmark runs it against this tree and against an older revision, in
turns, so that both figures come from the same run.

    python bench/sources_worker.py tail|exec LINES_FILE COUNT    # prints one result as JSON
    python bench/sources_worker.py modbus PORT SECONDS

The agent runs in this process (``agent.supervisor.Agent``) until its ``window`` has processed
``COUNT`` readings. The lines only appear once the agent is ready (the file is moved into place,
or the command waits for it), so start-up is not measured; the figures are readings per second
of this process's CPU time (every thread: the outbox writes too) and of wall time.

``modbus``: the source alone under its runner, polling 10 devices of 100 holding registers every
second from the server on ``PORT``; once every device has answered once (the connection and the
imports are behind us), this process's CPU time over ``SECONDS``, as a share of one core and per
device poll. ``modbus-work``: the source's own work on a device's reply of 100 registers
(decode, records, counters), with a stand-in connection that answers at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.bus import Bus, RecordQueue
from agent.config import load_config
from agent.counters import CounterSet
from agent.registry import resolve_source
from agent.runtime.source_runner import SourceRunner
from agent.supervisor import Agent

CONFIG = """
device_id = "bench"
data_dir = "{data}"

[[sources]]
name = "lines"
{source}
format = "json"

[[modules]]
name = "w"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "60s"
stats = ["count", "mean", "min", "max"]
"""


def _source(kind: str, tmp: Path, lines: Path) -> tuple[str, Path]:
    """The source's keys, and the path whose appearance starts the lines flowing."""
    if kind == "tail":
        target = tmp / "follow.jsonl"
        return f'type = "tail"\npath = "{target}"\nstart = "beginning"\npoll = "50ms"', target
    go = tmp / "go"
    script = f'while [ ! -e "{go}" ]; do sleep 0.02; done; exec cat "{lines}"; '
    return f'type = "exec"\ncommand = ["sh", "-c", {json.dumps(script)}]', go


async def _measure(kind: str, lines: Path, count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as folder:
        tmp = Path(folder)
        keys, trigger = _source(kind, tmp, lines)
        config = tmp / "agent.toml"
        config.write_text(CONFIG.format(data=tmp / "data", source=keys))
        agent = Agent(load_config(config))
        ready = asyncio.Event()
        task = asyncio.create_task(agent.run(on_ready=ready.set))
        await ready.wait()
        if kind == "tail":
            shutil.copyfile(lines, tmp / "staged")
            cpu, wall = time.process_time(), time.perf_counter()
            os.rename(tmp / "staged", trigger)
        else:
            cpu, wall = time.process_time(), time.perf_counter()
            trigger.touch()
        totals = agent.counters.totals
        while totals.get(("module:w", "processed"), 0) < count:
            await asyncio.sleep(0.005)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        agent.request_stop()
        await task
        return {"cpu": count / cpu, "wall": count / wall}


async def _modbus(port: int, seconds: float) -> dict[str, float]:
    devices = [{"name": f"d{unit}", "unit": unit, "interval": 1.0, "registers": [
        {"name": f"r{n}", "address": n} for n in range(100)]} for unit in range(1, 11)]
    cls = resolve_source("modbus")
    config = cls.Config.model_validate({"type": "modbus", "name": "b", "timeout": 2.0,
                                        "url": f"modbus+tcp://127.0.0.1:{port}", "devices": devices})
    bus, counters, inbox = Bus(), CounterSet(), RecordQueue(10_000_000)
    bus.subscribe(["#"], inbox)
    task = asyncio.create_task(SourceRunner(cls, config, "b", bus, counters).run())
    taken = [0]

    async def take() -> None:  # as a module would: the readings do not pile up in memory
        while True:
            await inbox.wait_nonempty()
            while (batch := inbox.get_nowait()) is not None:
                taken[0] += len(batch)

    consumer = asyncio.create_task(take())
    async with asyncio.timeout(60):
        while taken[0] < 1000:  # every device polled once
            await asyncio.sleep(0.01)
    cpu, wall, first = time.process_time(), time.perf_counter(), taken[0]
    await asyncio.sleep(seconds)
    cpu, wall, polls = time.process_time() - cpu, time.perf_counter() - wall, (taken[0] - first) / 100
    task.cancel()
    consumer.cancel()
    await asyncio.gather(task, consumer, return_exceptions=True)
    errors = {key: n for (_, key), n in counters.totals.items() if key.startswith("errors.")}
    return {"share": cpu / wall, "per_poll": cpu / polls, "done": polls / (10 * wall), **errors}


class _Answers:
    """Stands for the connection in ``modbus-work``: every read answers at once, so what is
    measured is the source's own work on a reply (decode, records, counters), none of pymodbus's."""

    async def read(self, kind: str, address: int, count: int, unit: int) -> list[int]:
        return list(range(address, address + count))


async def _modbus_work(polls: int) -> dict[str, float]:
    devices = [{"name": f"d{unit}", "unit": unit, "registers": [
        {"name": f"r{n}", "address": n} for n in range(100)]} for unit in range(1, 11)]
    cls = resolve_source("modbus")
    config = cls.Config.model_validate({"type": "modbus", "name": "b", "devices": devices,
                                        "url": "modbus+tcp://127.0.0.1:502"})
    runner = SourceRunner(cls, config, "b", Bus(), CounterSet())
    source: Any = cls(config, runner.context)
    source._connection = _Answers()
    device = config.devices[0]
    cpu = time.process_time()
    for _ in range(polls):
        records, _faults = await source._read_device(device, time.time())
    assert len(records) == 100
    return {"per_poll": (time.process_time() - cpu) / polls}


def main() -> None:
    kind = sys.argv[1]
    if kind == "modbus-work":
        result = asyncio.run(_modbus_work(int(sys.argv[2])))
    elif kind == "modbus":
        result = asyncio.run(_modbus(int(sys.argv[2]), float(sys.argv[3])))
    else:
        result = asyncio.run(_measure(kind, Path(sys.argv[2]), int(sys.argv[3])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Sources: readings per second of JSON lines through ``tail`` and ``exec`` into ``window``, and
the CPU a Modbus poll costs, each beside a naive way of doing the same.

* ``tail`` / ``exec``: N JSON lines in the agent's reading shape, read by the source (a file
  followed from its beginning; ``cat`` of the same file as the command) and then summed by a
  60 s ``window``, on one core: N / (time the source took + time the window took). Baseline: a
  naive source, ``for line in file: json.loads``, a record and a bus publish per line.
* ``modbus``: 10 devices of 100 holding registers each, polled every second from pymodbus's own
  TCP server in another process; the CPU of this process over the run, as a share of one core
  and per poll of one device. Baseline: the same 1,000 values at addresses two apart, so that
  every value is a request of its own (what a poller without request grouping does).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.api import Record
from agent.bus import Bus, RecordQueue
from agent.counters import CounterSet
from agent.registry import resolve_source
from agent.runtime.source_runner import SourceRunner
from agent.source_harness import run_source_async
from agent.testing import module_harness
from bench.common import Result, median_of

LINE_TARGET = 100_000
MODBUS_TARGET = 0.02  # of one core
T0 = 1_700_000_000.0
SENSORS = 100


def _lines(path: Path, count: int) -> None:
    with path.open("w") as file:
        for n in range(count):
            file.write(json.dumps({"sensor": f"s{n % SENSORS}", "value": n % 997 * 0.5, "ts": T0 + n / 1000})
                       + "\n")


@contextlib.contextmanager
def _one_core() -> Iterator[None]:
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _into_window(records: list[Record]) -> float:
    """Seconds the window module takes over ``records``."""
    harness = module_harness("window", {"every": "60s", "stats": ["count", "mean", "min", "max"]},
                             strict=False, keep=False, start_at=T0)
    started = time.perf_counter()
    harness.feed(records)
    harness.stop()
    elapsed = time.perf_counter() - started
    harness.close()
    return elapsed


def _source_rate(kind: str, config: dict[str, Any], count: int) -> float:
    gc.collect()
    started = time.perf_counter()
    run = asyncio.run(run_source_async(kind, config, until=lambda run: len(run.records) >= count,
                                       timeout=120, queue=10_000_000))
    source_time = time.perf_counter() - started
    assert len(run.records) == count, (kind, len(run.records), run.counters)
    return count / (source_time + _into_window(run.records))


def _naive_rate(path: Path, count: int) -> float:
    gc.collect()
    bus, inbox = Bus(), RecordQueue(10_000_000)
    bus.subscribe(["#"], inbox)
    started = time.perf_counter()
    with path.open() as file:
        for line in file:
            body = json.loads(line)
            bus.publish([Record("sensors/" + body["sensor"], float(body["ts"]),
                                {"sensor": body["sensor"], "value": body["value"]})])
    records: list[Record] = []
    while (batch := inbox.get_nowait()) is not None:
        records += batch
    source_time = time.perf_counter() - started
    return count / (source_time + _into_window(records))


MODBUS_SERVER = """
import asyncio, logging, sys
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
logging.getLogger("pymodbus").setLevel(logging.ERROR)
def device(unit):
    return SimDevice(unit, simdata=([SimData(0, values=[False], datatype=DataType.BITS)],
        [SimData(0, values=[False], datatype=DataType.BITS)],
        [SimData(0, values=list(range(250)), datatype=DataType.REGISTERS)],
        [SimData(0, values=[0], datatype=DataType.REGISTERS)]))
async def main():
    server = ModbusTcpServer([device(u) for u in range(1, 11)], address=("127.0.0.1", int(sys.argv[1])))
    await server.serve_forever()
asyncio.run(main())
"""


def _modbus_cpu(port: int, spread: int, seconds: float) -> tuple[float, float, float]:
    """CPU share of one core, CPU seconds per device poll, and the share of polls done."""
    devices = [{"name": f"d{unit}", "unit": unit, "interval": 1.0, "registers": [
        {"name": f"r{n}", "address": n * spread} for n in range(100)]} for unit in range(1, 11)]
    config = {"url": f"modbus+tcp://127.0.0.1:{port}", "timeout": 2.0, "devices": devices}
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    records, counters = asyncio.run(_run_alone("modbus", config, seconds))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    polls = records / 100
    assert polls >= 1 and not any(key.startswith("errors.") for key in counters), counters
    return cpu / wall, cpu / polls, polls / (10 * seconds)


async def _run_alone(kind: str, raw: dict[str, Any], seconds: float) -> tuple[int, dict[str, int]]:
    """The source under its runner for ``seconds``, nothing else in the process: readings made,
    and its counters."""
    cls = resolve_source(kind)
    bus, counters, inbox = Bus(), CounterSet(), RecordQueue(10_000_000)
    bus.subscribe(["#"], inbox)
    config = cls.Config.model_validate({"type": kind, "name": "b", **raw})
    runner = SourceRunner(cls, config, "b", bus, counters)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return inbox.size, {key: n for (scope, key), n in counters.totals.items() if scope == "source:b"}


def run(quick: bool) -> list[Result]:
    runs = 3
    count = 50_000 if quick else 300_000
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp, _one_core():
        path = Path(tmp) / "lines.jsonl"
        _lines(path, count)
        naive, naive_runs = median_of(runs, lambda: _naive_rate(path, count))
        for kind, config in {
            "tail": {"path": str(path), "start": "beginning", "poll": 0.05},
            "exec": {"command": ["cat", str(path)]},
        }.items():
            rate, samples = median_of(
                runs, lambda kind=kind, config=config: _source_rate(kind, config, count)
            )
            results.append(Result(
                "sources", f"{kind}: JSON lines into window, readings/s", rate, "readings/s",
                baseline_name="naive: json.loads and a publish per line", baseline=naive,
                runs=samples, baseline_runs=naive_runs, target=f">= {LINE_TARGET:,}",
                met=rate >= LINE_TARGET, note=f"{count:,} lines, {SENSORS} sensors, one core",
            ))
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", MODBUS_SERVER, str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        seconds = 4.0 if quick else 10.0
        grouped = [_modbus_cpu(port, 1, seconds) for _ in range(runs)]
        single = [_modbus_cpu(port, 2, seconds) for _ in range(runs)]
    finally:
        server.terminate()
        server.wait(10)
    share = sorted(g[0] for g in grouped)[1]
    base_share = sorted(s[0] for s in single)[1]
    results.append(Result(
        "sources", "modbus: 10 devices × 100 registers every 1 s, CPU", share * 100, "% of a core",
        baseline_name="one request per register", baseline=base_share * 100,
        runs=[g[0] * 100 for g in grouped], baseline_runs=[s[0] * 100 for s in single],
        target=f"<= {MODBUS_TARGET * 100:.0f} %", met=share <= MODBUS_TARGET,
        note=f"{seconds:.0f} s runs, server in another process, loopback TCP; polls done: "
             f"{sorted(g[2] for g in grouped)[1]:.0%} (baseline {sorted(s[2] for s in single)[1]:.0%})",
    ))
    per_poll = sorted(g[1] for g in grouped)[1]
    results.append(Result(
        "sources", "modbus: CPU per device poll (100 registers)", per_poll * 1e3, "ms",
        baseline_name="one request per register", baseline=sorted(s[1] for s in single)[1] * 1e3,
        runs=[g[1] * 1e3 for g in grouped], baseline_runs=[s[1] * 1e3 for s in single],
        note="1 request of 100 registers vs 100 requests",
    ))
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise TimeoutError("the Modbus server did not start")



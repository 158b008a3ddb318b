"""Sources: readings per CPU-second of JSON lines through ``tail`` and ``exec`` into ``window``,
and the CPU a Modbus poll costs, each beside the same measurement of an earlier revision.

* ``tail`` / ``exec``: N JSON lines in the agent's reading shape (100 sensors) through the whole
  daemon path: the source reads them (a file followed from its beginning; ``cat`` of the same
  file as the command), the bus, the module runner, a 60 s ``window`` with ``sync``, the
  committer and the SQLite outbox with its checkpoints. Figure: N / the agent process's CPU
  time (every thread) until the window has processed them all; wall-clock rate beside it.
* ``modbus``: 10 devices of 100 holding registers each, polled every second from pymodbus's own
  TCP server in another process; once every device has answered once, the CPU of the polling
  process over the run, as a share of one core and per poll of one device. And the source's
  own work on a reply alone (decode, records, counters), with a connection that answers at once:
  on a loaded machine the whole poll's figure moves more with the load than with our code.

Both run in ``bench/sources_worker.py``, in a process of its own pinned to one core, once with
this tree's ``agent`` and once with the revision ``BEFORE`` (unpacked with ``git archive``),
round after round in turns, so that load on the machine falls on both alike. Medians of the
rounds; CPU-time figures are the ones to read on a shared machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "sources_worker.py"
BEFORE = "4e13cdf"
"""The last revision before the sources' hot paths were reworked (batch routing on the bus,
a parsed line becoming its reading's data, a Modbus block unpacked at once)."""
LINE_TARGET = 100_000  # readings per CPU-second
MODBUS_TARGET = 0.02  # of one core
T0 = 1_700_000_000.0
SENSORS = 100


def _lines(path: Path, count: int) -> None:
    with path.open("w") as file:
        for n in range(count):
            file.write(json.dumps({"sensor": f"s{n % SENSORS}", "value": n % 997 * 0.5, "ts": T0 + n / 1000})
                       + "\n")


def _tree(rev: str, into: Path) -> Path:
    """``agent/`` and ``modules/`` of ``rev``, unpacked into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "agent", "modules"],
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    return into


def _worker(tree: Path, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    pin = ["taskset", "-c", str(max(os.sched_getaffinity(0)))] if _has("taskset") else []
    out = subprocess.run([*pin, sys.executable, str(WORKER), *args], capture_output=True, text=True,
                         check=True, env=env, timeout=600).stdout
    return dict(json.loads(out.splitlines()[-1]))


def _has(tool: str) -> bool:
    return any((Path(folder) / tool).exists() for folder in os.environ.get("PATH", "").split(":"))


def _rounds(trees: dict[str, Path], runs: int, *args: str) -> dict[str, list[dict[str, float]]]:
    """``runs`` rounds of the worker, each tree once a round, in turns."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, tree in trees.items():
            results[name].append(_worker(tree, *args))
    return results


def _median(samples: list[dict[str, float]], key: str) -> tuple[float, list[float]]:
    values = [sample[key] for sample in samples]
    return statistics.median(values), values


def run(quick: bool) -> list[Result]:
    runs = 3
    count = 50_000 if quick else 300_000
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        trees = {"after": ROOT, "before": _tree(BEFORE, before)}
        path = Path(tmp) / "lines.jsonl"
        _lines(path, count)
        for kind in ("tail", "exec"):
            samples = _rounds(trees, runs, kind, str(path), str(count))
            rate, rates = _median(samples["after"], "cpu")
            old, olds = _median(samples["before"], "cpu")
            wall = _median(samples["after"], "wall")[0]
            results.append(Result(
                "sources", f"{kind}: JSON lines into window, readings per CPU-second", rate, "readings/s",
                baseline_name=f"revision {BEFORE}", baseline=old, runs=rates, baseline_runs=olds,
                target=f">= {LINE_TARGET:,}", met=rate >= LINE_TARGET,
                note=f"{count:,} lines, {SENSORS} sensors, whole daemon path to the outbox, one core; "
                     f"wall clock {wall:,.0f}/s (before {_median(samples['before'], 'wall')[0]:,.0f}/s)",
            ))
        results += _modbus(trees, runs, 4.0 if quick else 10.0)
        work = _rounds(trees, runs, "modbus-work", "500" if quick else "3000")
    per_poll, per_polls = _median(work["after"], "per_poll")
    old_poll, old_polls = _median(work["before"], "per_poll")
    results.append(Result(
        "sources", "modbus: the source's own work per device poll (100 registers)", per_poll * 1e3,
        "ms", baseline_name=f"revision {BEFORE}", baseline=old_poll * 1e3,
        runs=[s * 1e3 for s in per_polls], baseline_runs=[s * 1e3 for s in old_polls],
        note="decode, records and counters of one reply; a stand-in connection that answers at "
             "once, so no pymodbus and no network",
    ))
    return results


def _modbus(trees: dict[str, Path], runs: int, seconds: float) -> list[Result]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", MODBUS_SERVER, str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        samples = _rounds(trees, runs, "modbus", str(port), str(seconds))
    finally:
        server.terminate()
        server.wait(10)
    errors = [sample for name in samples for sample in samples[name] if len(sample) > 3]
    assert not errors, errors  # every poll answered: a fault would make the figures meaningless
    share, shares = _median(samples["after"], "share")
    old, olds = _median(samples["before"], "share")
    per_poll, per_polls = _median(samples["after"], "per_poll")
    old_poll, old_polls = _median(samples["before"], "per_poll")
    done = _median(samples["after"], "done")[0]
    return [
        Result(
            "sources", "modbus: 10 devices × 100 registers every 1 s, CPU", share * 100, "% of a core",
            baseline_name=f"revision {BEFORE}", baseline=old * 100, runs=[s * 100 for s in shares],
            baseline_runs=[s * 100 for s in olds], target=f"<= {MODBUS_TARGET * 100:.0f} %",
            met=share <= MODBUS_TARGET,
            note=f"{seconds:.0f} s runs after the first poll, server in another process, loopback "
                 f"TCP; polls done: {done:.0%}",
        ),
        Result(
            "sources", "modbus: CPU per device poll (100 registers)", per_poll * 1e3, "ms",
            baseline_name=f"revision {BEFORE}", baseline=old_poll * 1e3,
            runs=[s * 1e3 for s in per_polls], baseline_runs=[s * 1e3 for s in old_polls],
            note="one request of 100 registers",
        ),
    ]


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 60  # a loaded machine imports pymodbus slowly
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise TimeoutError("the Modbus server did not start")


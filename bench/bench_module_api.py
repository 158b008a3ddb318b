"""The module runtime's cost per record: the daemon's module runner (in-process, no broker, no
outbox) over 1,000 sensors' readings, in batches of 512 as the MQTT source hands them on.

Method: ``bench/module_api_worker.py`` runs in a process of its own, pinned to one core, once
with this tree's ``agent`` and once with the revision before the second edition of the module
API (``BEFORE``, unpacked with ``git archive``), in the same run; each figure is the median of
3 runs of the worker's own repetitions, in readings per CPU-second of the worker (wall-clock
rates on a machine shared with other jobs varied 4x between rounds of the same case). Cases: a
plain ``def process`` pass-through module and ``window`` (before and after: the price of the new
runtime for modules that use none of it), and an ``async def process`` pass-through beside the
plain one (the price of awaiting).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Result

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "module_api_worker.py"
BEFORE = "7d428e0^"
"""The last revision before the module context, stepper and async steps."""
MAX_LOSS = 0.05  # a plain module keeps at least 95 % of its rate


def _tree(rev: str, into: Path) -> Path | None:
    """``agent/`` and ``modules/`` of ``rev``, unpacked into ``into``; None without git."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "agent", "modules"],
                                 capture_output=True, check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return into


def _rates(tree: Path, case: str, count: int, runs: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    pin = ["taskset", "-c", "0"] if _has("taskset") else []
    out = subprocess.run([*pin, sys.executable, str(WORKER), case, str(count), str(runs)],
                         capture_output=True, text=True, check=True, env=env, timeout=600).stdout
    return list(json.loads(out))


def _has(tool: str) -> bool:
    return any((Path(folder) / tool).exists() for folder in os.environ.get("PATH", "").split(":"))


def _median(samples: list[list[float]]) -> tuple[float, list[float]]:
    medians = [statistics.median(run) for run in samples]
    return statistics.median(medians), medians


def run(quick: bool) -> list[Result]:
    count = 50_000 if quick else 300_000
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-api-") as tmp:
        before = _tree(BEFORE, Path(tmp))
        trees = {"after": ROOT} | ({"before": before} if before else {})
        samples: dict[tuple[str, str], list[list[float]]] = {}
        for _ in range(3):  # interleaved, so that a busy moment hits both sides alike
            for case in ("plain", "window", "async"):
                for side, tree in trees.items():
                    if case == "async" and side == "before":
                        continue  # async steps did not exist
                    samples.setdefault((case, side), []).append(_rates(tree, case, count, 3))
    for case, label in (("plain", "pass-through, def process"), ("window", "window, 4 stats")):
        after, after_runs = _median(samples[(case, "after")])
        if (case, "before") not in samples:
            results.append(Result("module API", f"{label}: readings per CPU-second", after,
                                  "readings/s", runs=after_runs, note="no git: no baseline"))
            continue
        base, base_runs = _median(samples[(case, "before")])
        results.append(Result(
            "module API", f"{label}: readings per CPU-second", after, "readings/s",
            baseline_name=f"before ({BEFORE})", baseline=base, runs=after_runs,
            baseline_runs=base_runs, target=f">= {1 - MAX_LOSS:.0%} of before",
            met=after >= (1 - MAX_LOSS) * base,
            note=f"in-process runner, {count:,} readings, 1,000 sensors, one core",
        ))
    plain, plain_runs = _median(samples[("plain", "after")])
    rate, runs = _median(samples[("async", "after")])
    results.append(Result(
        "module API", "pass-through, async def process: readings per CPU-second", rate,
        "readings/s",
        baseline_name="def process", baseline=plain, runs=runs, baseline_runs=plain_runs,
        note="the same module with an async process, no I/O: the cost of a coroutine a record",
    ))
    return results


if __name__ == "__main__":
    for result in run(quick=True):
        print(result)

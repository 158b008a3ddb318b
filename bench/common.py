"""What every benchmark shares: a result row, medians over repeated runs, a machine description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    """One row of docs/benchmarks.md: a figure beside its baseline, both medians of ``runs``."""

    benchmark: str
    metric: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    samples = [measure() for _ in range(runs)]
    return statistics.median(samples), samples


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mosquitto = subprocess.run(
            ["mosquitto", "-h"], capture_output=True, text=True, timeout=5
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        mosquitto = "mosquitto not found"
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {mosquitto}"
    )

"""Built-in modules through the harness: readings/s on one core, memory for 1,000 sensors, and
the window's quantile error on 10^6 readings.

Method: readings are built before the clock starts (1,000 sensors, one reading a second each, a
random walk per sensor) and fed through ``agent.testing`` as replay does: batches of 512, the
clock following the readings, ticks as it passes them, ``stop`` at the end, nothing kept. The
process is pinned to one core. Throughput and memory are medians of at least 3 runs. Memory is
what ``tracemalloc`` sees allocated by the module while every sensor has a full window open
(the largest its state gets), divided by nothing: it is for all 1,000 sensors.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from agent.api import Record
from agent.testing import module_harness
from bench.common import Result, median_of

SENSORS = 1000
WINDOW_TARGET = 250_000
QUANTILE_ERROR = 0.01  # the window's documented bound, as a fraction of the window's range
QS = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def _readings(count: int, sensors: int = SENSORS, seed: int = 1) -> list[Record]:
    rng = random.Random(seed)
    levels = [20.0 + rng.uniform(-5, 5) for _ in range(sensors)]
    names = [f"s{index:04d}" for index in range(sensors)]
    topics = [f"sensors/{name}" for name in names]
    out = []
    start = 1_700_000_000.0
    for i in range(count):
        index = i % sensors
        levels[index] += rng.gauss(0, 0.05)
        out.append(Record(topics[index], start + i / sensors,
                          {"sensor": names[index], "value": round(levels[index], 3)}))
    return out


def _onnx_model(folder: Path) -> str | None:
    """A small MLP (16 -> 8 -> 1) written with the onnx package, or None without the ml extra."""
    try:
        import onnx
        import onnxruntime  # type: ignore[import-untyped]  # noqa: F401  # ships no hints
        from onnx import TensorProto, helper
    except ImportError:
        return None
    rng = random.Random(2)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [16, 8], [rng.gauss(0, 0.3) for _ in range(128)])
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [8, 1], [rng.gauss(0, 0.3) for _ in range(8)])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["score"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = folder / "mlp.onnx"
    onnx.save(model, str(path))
    return str(path)


def _cases(model: str | None) -> dict[str, tuple[str, dict[str, Any]]]:
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "window, 4 stats": ("window", {"every": "60s", "stats": ["count", "mean", "min", "max"]}),
        "window, p50 p90 p95 p99": ("window", {"every": "60s",
                                               "stats": ["count", "p50", "p90", "p95", "p99"]}),
        "window, hopping 60s/10s": ("window", {"every": "60s", "hop": "10s",
                                               "stats": ["count", "mean", "min", "max"]}),
        "deadband": ("deadband", {"absolute": 0.1, "max_interval": "5m"}),
        "threshold, 2 rules": ("threshold", {"rules": [
            {"name": "hot", "above": 24.0, "hysteresis": 0.5, "for": "10s"},
            {"name": "fast", "rate_above": 0.5, "hysteresis": 0.1}]}),
        "anomaly, 4 detectors": ("anomaly", {"detectors": [
            {"type": "zscore"}, {"type": "spike"}, {"type": "flatline"},
            {"type": "gap", "max_silence": "5m"}]}),
        "resample, 10s mean": ("resample", {"every": "10s", "gap": "interpolate"}),
        "transform, calibrate + where": ("transform", {
            "sensors": {"s0*": {"scale": 1.01, "offset": -0.2}}, "where": "value > -40"}),
    }
    if model is not None:
        cases["onnx, MLP 16-8-1 every 16"] = ("onnx", {"model": model, "window": 16})
    return cases


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


def _throughput(use: str, config: dict[str, Any], records: list[Record]) -> float:
    gc.collect()
    harness = module_harness(use, config, strict=False, keep=False,
                             start_at=records[0].ts)
    started = time.perf_counter()
    harness.feed(records)
    harness.stop()
    elapsed = time.perf_counter() - started
    harness.close()
    return len(records) / elapsed


def _memory(use: str, config: dict[str, Any], records: list[Record]) -> float:
    """Bytes the module holds for 1,000 sensors with their windows full (before any closes)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        harness = module_harness(use, config, strict=False, keep=False,
                                 start_at=records[0].ts)
        harness.feed(records)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    harness.close()
    return float(held)


def _quantile_error(count: int, make: Callable[[random.Random], float]) -> tuple[float, float]:
    """The window's worst p50...p99 error on ``count`` readings in one window: as a fraction of
    the window's range, and (p90...p99) as a fraction of the value's distance from the median,
    which is what the sketch bounds."""
    rng = random.Random(4)
    values = [make(rng) for _ in range(count)]
    records = [Record("sensors/q", 1_000_000.0 + i * 1e-4, {"sensor": "q", "value": v})
               for i, v in enumerate(values)]
    harness = module_harness("window", every="1d", stats=["count", *QS], strict=False)
    (summary,) = harness.run(records)
    ordered = sorted(values)
    span = ordered[-1] - ordered[0]
    median = ordered[(count - 1) // 2]
    worst_span = worst_distance = 0.0
    for name, q in QS.items():
        true = ordered[math.floor(q * (count - 1))]
        error = abs(summary.data[name] - true)
        worst_span = max(worst_span, error / span)
        if name != "p50":
            worst_distance = max(worst_distance, error / abs(true - median))
    return worst_span, worst_distance


def run(quick: bool) -> list[Result]:
    runs = 3
    memory_runs = 1 if quick else 3  # memory hardly varies; tracemalloc makes each run slow
    count = 30_000 if quick else 300_000
    results: list[Result] = []
    records = _readings(count)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp, _one_core():
        cases = _cases(_onnx_model(Path(tmp)))
        full = _readings(SENSORS * 60, seed=3)  # a full 60 s window open for every sensor
        for label, (use, config) in cases.items():
            rate, samples = median_of(runs, partial(_throughput, use, config, records))
            is_window = label == "window, 4 stats"
            results.append(Result(
                "modules", f"{label}: readings/s", rate, "readings/s", runs=samples,
                target=f">= {WINDOW_TARGET:,}" if is_window else "",
                met=(rate >= WINDOW_TARGET) if is_window else None,
                note=f"{SENSORS:,} sensors, {count:,} readings, one core",
            ))
            held, held_runs = median_of(memory_runs, partial(_memory, use, config, full))
            results.append(Result(
                "modules", f"{label}: memory, {SENSORS:,} sensors", held / 1e6, "MB",
                runs=[h / 1e6 for h in held_runs],
                note=f"{held / SENSORS / 1e3:.1f} kB a sensor, a 60 s window open for each",
            ))
        if not quick:
            sketch_full = _readings(SENSORS * 400, seed=5)  # past 256 a window: sketch mode
            held, held_runs = median_of(memory_runs, lambda: _memory(
                "window", {"every": "1h", "stats": ["count", *QS]}, sketch_full))
            results.append(Result(
                "modules", f"window, p50-p99, sketch: memory, {SENSORS:,} sensors", held / 1e6,
                "MB", runs=[h / 1e6 for h in held_runs],
                note=f"{held / SENSORS / 1e3:.1f} kB a sensor, 400 readings each (sketch mode)",
            ))
    quantile_count = 20_000 if quick else 1_000_000
    for label, make in {
        "normal around 1013": lambda rng: rng.gauss(1013.25, 4.0),
        "lognormal (heavy tail)": lambda rng: rng.lognormvariate(0, 1.5),
        "uniform -40..40": lambda rng: rng.uniform(-40, 40),
    }.items():
        span_error, distance_error = _quantile_error(quantile_count, make)
        results.append(Result(
            "modules", f"window quantile error, {label}", span_error * 100, "% of range",
            target=f"<= {QUANTILE_ERROR * 100:g} %", met=span_error <= QUANTILE_ERROR,
            note=f"{quantile_count:,} readings in one window, worst of p50-p99; p90-p99 within "
                 f"{distance_error * 100:.2f} % of their distance from the median",
        ))
    return results


if __name__ == "__main__":
    for result in run(quick=True):
        runs = ", ".join(f"{r:,.3g}" for r in result.runs)
        print(f"{result.metric}: {result.value:,.3f} {result.unit} ({runs}) {result.note}")

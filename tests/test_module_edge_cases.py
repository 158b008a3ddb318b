"""Runtime edge cases every built-in module gets right, as one table: bad values, duplicate and
out-of-order timestamps, clock jumps, sensors that come and go. The harness is strict: a module
that raises fails the test."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from agent import Record
from agent.registry import available_modules
from agent.testing import module_harness, reading

BAD_COUNTERS = {"not_a_number", "not_finite", "filtered", "expression_errors"}


def onnx_model(tmp: Path) -> str | None:
    try:
        import onnx
        import onnxruntime  # noqa: F401
        from onnx import TensorProto, helper
    except ImportError:
        return None
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph([helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)],
                              "max", [x], [y], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp / "max.onnx"
    onnx.save(model, str(path))
    return str(path)


CONFIGS: dict[str, dict[str, Any]] = {
    "window": {"every": "10s", "stats": ["count", "mean", "stddev", "first", "last", "p50", "p99"]},
    "deadband": {"absolute": 0.2, "max_interval": "30s"},
    "threshold": {"rules": [
        {"name": "hot", "above": 23.0, "hysteresis": 0.5, "for": "5s"},
        {"name": "fast", "rate_above": 0.5, "hysteresis": 0.1},
    ]},
    "anomaly": {"detectors": [
        {"type": "zscore", "warm_up": 10}, {"type": "spike", "window": 11},
        {"type": "flatline", "duration": "20s"}, {"type": "gap", "max_silence": "30s"},
    ]},
    "resample": {"every": "5s", "gap": "interpolate", "gap_limit": "1m"},
    "transform": {"sensors": {"a": {"scale": 1.8, "offset": 32, "rename": "a_f"}},
                  "where": "value > -100"},
    "onnx": {"window": 4},
    "join": {"by_level": 1, "max_skew": "1m"},  # named inputs: tests/test_module_join.py
}
SOME = ["window", "deadband", "threshold", "anomaly", "resample", "transform", "onnx"]


def test_the_table_covers_every_built_in_module() -> None:
    built_in = {name for name, target in available_modules().items()
                if target.startswith("modules.")}
    assert built_in == set(CONFIGS)


@pytest.fixture
def make(tmp_path: Path):  # type: ignore[no-untyped-def]
    def build(name: str, **extra: Any) -> Any:
        options = dict(CONFIGS[name])
        if name == "onnx":
            model = onnx_model(tmp_path)
            if model is None:
                pytest.skip("onnx/onnxruntime not installed (pip install '.[ml]' onnx)")
            options["model"] = model
        return module_harness(name, **options, **extra)

    return build


def clean(n: int = 300, sensors: tuple[str, ...] = ("a", "b"), start: float = 1000.0) -> list:
    """A smooth signal with a bump, a step and a flat stretch: something for every module."""
    rows = []
    for i in range(n):
        for index, sensor in enumerate(sensors):
            value = 20 + 3 * math.sin(i / 15 + index) + (4 if 100 <= i < 103 else 0)
            if 200 <= i < 240:
                value = 21.0
            rows.append(reading(sensor, start + i, round(value, 3)))
    return rows


def same(records: list[Record]) -> list[tuple[str, float, dict[str, Any]]]:
    return [(r.topic, r.ts, r.data) for r in records]


@pytest.mark.parametrize("name", SOME)
@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, -math.inf, "hot", None, True, [1.0], {"v": 1}, ""],
    ids=["nan", "inf", "-inf", "text", "null", "bool", "list", "object", "empty"],
)
def test_bad_values_are_counted_and_change_nothing(make, name, bad) -> None:
    good = clean()
    expected = same(make(name).run(good))
    mixed: list[Record] = []
    for index, record in enumerate(good):
        mixed.append(record)
        if index % 37 == 0:
            mixed.append(reading(record.data["sensor"], record.ts, bad))
    harness = make(name)
    assert same(harness.run(mixed)) == expected
    counted = sum(harness.counters[key] for key in BAD_COUNTERS)
    assert counted == len(mixed) - len(good), harness.counters


@pytest.mark.parametrize("name", SOME)
def test_duplicate_timestamps(make, name) -> None:
    doubled = [record for record in clean(60) for _ in range(2)]
    harness = make(name)
    out = harness.run(doubled)
    if name == "window":
        assert sum(r.data["count"] for r in out) == len(doubled)
    if name == "resample":
        assert sum(r.data["count"] for r in out) == len(doubled)
    if name == "transform":
        assert len(out) == len(doubled)


@pytest.mark.parametrize("name", SOME)
def test_out_of_order_readings_are_folded_in_or_counted(make, name) -> None:
    rows = clean(120)
    for index in range(10, len(rows) - 30, 40):  # a reading held back by 25 others
        rows.insert(index + 25, rows.pop(index))
    harness = make(name)
    out = harness.run(rows)
    late = harness.counters["late"] + harness.counters["out_of_order"]
    if name in ("window", "resample"):
        assert late > 0 and sum(r.data["count"] for r in out) + late == len(rows)
    elif name == "transform":
        assert len(out) == len(rows)  # order does not matter to it
    else:
        assert late > 0


@pytest.mark.parametrize("name", SOME)
def test_clock_jumps_back_and_forward(make, name) -> None:
    harness = make(name, follow_readings=False, start_at=1000.0)
    rows = clean(120)
    out = harness.feed(rows[:100])
    harness.clock.set(1000.0 - 86_400)  # the clock goes back a day
    out += harness.tick() + harness.feed(rows[100:160])
    harness.clock.set(1000.0 + 10 * 365 * 86_400)  # then ten years ahead
    out += harness.tick() + harness.feed(rows[160:]) + harness.stop()
    if name in ("window", "resample"):
        assert sum(r.data["count"] for r in out) == len(rows)  # nothing closed early, nothing late
    if name == "anomaly":
        assert not [r for r in out if r.data["type"] == "gap"]


@pytest.mark.parametrize("name", SOME)
def test_a_sensor_appears_and_another_disappears(make, name) -> None:
    first = [r for r in clean(100, ("a",))]
    later = [r for r in clean(200, ("b",), start=1050.0)]
    rows = sorted(first + later, key=lambda r: r.ts)
    harness = make(name, follow_readings=False, start_at=1000.0)
    out: list[Record] = []
    for record in rows:
        if record.ts > harness.clock():
            out += harness.advance_to(record.ts, step=1)
        out += harness.feed([record])
    flushed = harness.stop()
    if name in ("window", "resample"):
        assert sum(r.data["count"] for r in out + flushed) == len(rows)
        assert not [r for r in flushed if r.data["sensor"] == "a"]  # a's closed on timeout
    if name == "anomaly":
        gaps = [r.data for r in out if r.data["type"] == "gap"]
        assert [(g["event"], g["sensor"]) for g in gaps] == [("raised", "a")]

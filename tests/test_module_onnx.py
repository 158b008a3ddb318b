"""onnx: a model built here, in the test, run over sliding windows of readings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.testing import module_harness, reading

onnx = pytest.importorskip("onnx", reason="the onnx package writes the test model: pip install onnx")
pytest.importorskip("onnxruntime", reason="the ml extra is not installed: pip install '.[ml]'")
np = pytest.importorskip("numpy")

WEIGHTS = [[1.0, 0.5], [2.0, 0.5], [3.0, 0.5], [4.0, 0.5]]  # 4 inputs, 2 outputs


def linear_model(path: Path, batch: str | int = "batch", inputs: int = 4) -> Path:
    """y = x @ W + b, and the mean of x: two outputs, from an input [batch, inputs]."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, inputs])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])
    mean = helper.make_tensor_value_info("mean", TensorProto.FLOAT, [batch])
    weights = helper.make_tensor("W", TensorProto.FLOAT, [inputs, 2],
                                 [w for row in WEIGHTS[:inputs] for w in row])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [2], [0.0, -1.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
        ],
        "linear", [x], [y, mean], initializer=[weights, bias, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("batch", ["batch", 1])
def test_model_outputs_for_each_window_match_numpy(tmp_path, batch) -> None:
    model = linear_model(tmp_path / "m.onnx", batch=batch)
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    rows = [reading("a", i, v) for i, v in enumerate(values)] + [reading("b", 0, 1.0)]
    harness = module_harness("onnx", model=str(model), window=4, stride=2)
    out = harness.run(rows)
    assert [(r.data["sensor"], r.data["start"], r.data["end"], r.ts) for r in out] == [
        ("a", 0.0, 3.0, 3.0), ("a", 2.0, 5.0, 5.0), ("a", 4.0, 7.0, 7.0), ("a", 6.0, 9.0, 9.0)
    ]
    for record in out:
        window = np.array(values[int(record.data["start"]): int(record.data["end"]) + 1])
        want = window @ np.array(WEIGHTS) + np.array([0.0, -1.0])
        assert record.data["y"] == pytest.approx(want.tolist(), rel=1e-6)
        assert record.data["mean"] == pytest.approx(window.mean(), rel=1e-6)
    assert harness.counters["inferences"] == 4


def test_outputs_can_be_chosen_and_bad_records_are_counted(tmp_path) -> None:
    model = linear_model(tmp_path / "m.onnx")
    harness = module_harness("onnx", model=str(model), window=4, outputs=["mean"])
    out = harness.run([reading("a", i, v) for i, v in enumerate([1, 2, "x", float("nan"), 3, 4])]
                      + [reading("a", 0, 9.0)])
    assert [r.data for r in out] == [{"sensor": "a", "start": 0.0, "end": 5.0, "mean": 2.5}]
    assert harness.counters.values == {
        "not_a_number": 1, "not_finite": 1, "out_of_order": 1, "inferences": 1
    }


def test_two_features_a_step(tmp_path) -> None:
    model = linear_model(tmp_path / "m.onnx")
    records = [reading("a", i, float(i))._replace(data={"sensor": "a", "value": float(i),
                                                        "aux": 10.0}) for i in range(2)]
    out = module_harness("onnx", model=str(model), window=2, features=["value", "aux"]).run(records)
    assert out[0].data["mean"] == pytest.approx((0 + 10 + 1 + 10) / 4)


def test_a_model_that_does_not_fit_the_window_fails_at_start_with_the_reason(tmp_path) -> None:
    model = linear_model(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"shape \['batch', 4\].*window = 5"):
        module_harness("onnx", model=str(model), window=5)
    with pytest.raises(ValueError, match="no output 'score'"):
        module_harness("onnx", model=str(model), window=4, outputs=["score"])


def test_a_missing_model_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ValidationError, match="no model file"):
        module_harness("onnx", model=str(tmp_path / "absent.onnx"))

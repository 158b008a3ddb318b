"""Run an ONNX model over a sliding window of each sensor's readings (``onnxruntime``, from the
optional extra: ``pip install 'tidegate[ml]'``)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from agent import Context, Module, ModuleConfig, Record
from agent.extras import MissingExtra, require
from modules._common import NOT_A_NUMBER, NOT_FINITE, OUT_OF_ORDER, TOO_MANY_SENSORS, sensor_of

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64"}


class OnnxConfig(ModuleConfig):
    model: Path
    """The ``.onnx`` file (a relative path is from the agent's working directory)."""
    window: Annotated[int, Field(ge=1, le=100_000)] = 16
    """Readings per sensor in one model input."""
    stride: Annotated[int, Field(ge=1)] | None = None
    """Run the model every ``stride`` readings of a sensor (default: ``window``, so windows do
    not overlap; 1 slides the window by one reading)."""
    features: Annotated[tuple[str, ...], Field(min_length=1)] = ("value",)
    """The record fields that make one step of the input, in order."""
    input: str | None = None
    """The model input to feed (default: its only input)."""
    outputs: tuple[str, ...] | None = None
    """The model outputs to emit (default: all of them)."""
    threads: Annotated[int, Field(ge=1, le=16)] = 1
    """Threads onnxruntime may use; one leaves the other cores to the rest of the gateway."""
    max_sensors: Annotated[int, Field(ge=1)] = 10_000

    @field_validator("model")
    @classmethod
    def _model_exists(cls, model: Path) -> Path:
        if not model.expanduser().is_file():
            raise ValueError(f"no model file at {model}")
        require("ml", "the onnx module")
        return model.expanduser()


class Onnx(Module[OnnxConfig]):
    """Keeps the last ``window`` feature rows of each sensor and, every ``stride`` readings once
    the window is full, runs the model on it. Emits ``{"sensor", "start", "end", <output>...}``
    at the window's last reading time: one field per model output, a number for a single value,
    a list otherwise (NaN/infinities become null and are counted as ``non_finite_output``).

    The input tensor is ``[batch, window, features]`` or ``[batch, window * features]``, as the
    model declares; windows that are ready in the same batch of records go through the model in
    one call when its batch dimension is free. A record with a missing or non-numeric feature is
    counted as ``not_a_number`` and skipped; one older than the sensor's newest as
    ``out_of_order``.
    """

    Config = OnnxConfig
    description = "Run an ONNX model (onnxruntime) over a sliding window of each sensor's readings."

    def __init__(self, config: OnnxConfig, context: Context) -> None:
        super().__init__(config, context)
        self._stride = config.stride or config.window
        self._buffers: dict[str, tuple[deque[tuple[float, list[float]]], list[Any]]] = {}
        self._session: Any = None

    async def start(self) -> None:
        try:
            import numpy
            import onnxruntime  # type: ignore[import-untyped]  # ships no type hints
        except ModuleNotFoundError as exc:
            raise MissingExtra("ml", exc.name or "onnxruntime", "the onnx module") from None
        self._np: Any = numpy
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.config.threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(self.config.model), options, providers=["CPUExecutionProvider"]
        )
        self._bind_input()
        names = [output.name for output in self._session.get_outputs()]
        wanted = list(self.config.outputs or names)
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise ValueError(f"the model has no output {unknown[0]!r} (it has {names})")
        self._outputs = wanted

    def _bind_input(self) -> None:
        inputs = self._session.get_inputs()
        if self.config.input is None and len(inputs) != 1:
            raise ValueError(
                f"the model has {len(inputs)} inputs ({[i.name for i in inputs]}): set input"
            )
        chosen = next((i for i in inputs if i.name == (self.config.input or inputs[0].name)), None)
        if chosen is None:
            raise ValueError(f"the model has no input {self.config.input!r}")
        if chosen.type not in _DTYPES:
            raise ValueError(f"input {chosen.name!r} is {chosen.type}; float or double is needed")
        window, features = self.config.window, len(self.config.features)
        shape = list(chosen.shape)
        wanted = {3: [window, features], 2: [window * features]}.get(len(shape))
        dims = shape[1:]
        if wanted is None or any(
            isinstance(dim, int) and dim != want for dim, want in zip(dims, wanted, strict=True)
        ):
            raise ValueError(
                f"input {chosen.name!r} has shape {shape}; with window = {window} and "
                f"{features} feature(s) it must be [batch, {window}, {features}] or "
                f"[batch, {window * features}]"
            )
        self._input_name = chosen.name
        self._input_shape = wanted
        self._dtype = _DTYPES[chosen.type]
        self._batched = not isinstance(shape[0], int) or shape[0] != 1

    def process(self, record: Record) -> None:
        self.process_batch((record,))

    def process_batch(self, records: Iterable[Record]) -> None:
        ready: list[tuple[str, float, float, list[list[float]]]] = []
        for record in records:
            row = self._features(record)
            if row is None:
                continue
            sensor = sensor_of(record)
            entry = self._buffers.get(sensor)
            if entry is None:
                if len(self._buffers) >= self.config.max_sensors:
                    self.context.counters.incr(TOO_MANY_SENSORS)
                    continue
                entry = self._buffers[sensor] = (deque(maxlen=self.config.window), [0])
            rows, since = entry
            if rows and record.ts < rows[-1][0]:
                self.context.counters.incr(OUT_OF_ORDER)
                continue
            rows.append((record.ts, row))
            since[0] += 1
            if len(rows) == self.config.window and since[0] >= self._stride:
                since[0] = 0
                ready.append((sensor, rows[0][0], rows[-1][0], [r for _, r in rows]))
        if ready:
            self._infer(ready)

    def _features(self, record: Record) -> list[float] | None:
        row = []
        for name in self.config.features:
            value = record.data.get(name)
            if type(value) is not float and type(value) is not int:
                self.context.counters.incr(NOT_A_NUMBER)
                return None
            if not math.isfinite(value):
                self.context.counters.incr(NOT_FINITE)
                return None
            row.append(float(value))
        return row

    def _infer(self, ready: list[tuple[str, float, float, list[list[float]]]]) -> None:
        np = self._np
        groups = [ready] if self._batched else [[item] for item in ready]
        for group in groups:
            batch = np.asarray([item[3] for item in group], dtype=self._dtype)
            batch = batch.reshape([len(group), *self._input_shape])
            results = self._session.run(self._outputs, {self._input_name: batch})
            for index, (sensor, start, end, _) in enumerate(group):
                data: dict[str, Any] = {"sensor": sensor, "start": start, "end": end}
                for name, result in zip(self._outputs, results, strict=True):
                    data[name] = self._plain(result[index])
                self.context.emit(data, end)
        self.context.counters.incr("inferences", len(ready))

    def _plain(self, value: Any) -> Any:
        """A JSON-friendly copy of one output row: a float, or nested lists of floats."""
        values = self._np.asarray(value, dtype="float64")
        if values.size == 1:
            number = float(values.reshape(()))
            if math.isfinite(number):
                return number
            self.context.counters.incr("non_finite_output")
            return None
        if not self._np.isfinite(values).all():
            self.context.counters.incr("non_finite_output")
            return self._np.where(self._np.isfinite(values), values, None).tolist()
        return values.tolist()

    async def stop(self) -> None:
        self._session = None

"""Sparkplug B payloads as an edge node would publish them, for tests."""

from __future__ import annotations

from typing import Any

from agent.sources.payload.sparkplug_schema import Payload

DOUBLE, INT32, INT64, BOOLEAN, STRING, FLOAT = 10, 3, 4, 11, 12, 9
_FIELD = {DOUBLE: "double_value", FLOAT: "float_value", INT32: "int_value", INT64: "long_value",
          BOOLEAN: "boolean_value", STRING: "string_value"}


def payload(ts_ms: int | None, *metrics: dict[str, Any], seq: int = 0) -> bytes:
    """``metrics``: dicts with ``name``/``alias``, ``datatype``, ``value``, ``timestamp``."""
    message = Payload(seq=seq)
    if ts_ms is not None:
        message.timestamp = ts_ms
    for spec in metrics:
        metric = message.metrics.add()
        for key in ("name", "alias", "timestamp", "is_null"):
            if key in spec:
                setattr(metric, key, spec[key])
        metric.datatype = spec["datatype"]
        value = spec.get("value")
        if value is not None:
            if spec["datatype"] == INT32 and value < 0:
                value &= 0xFFFFFFFF  # as the specification carries Int32: two's complement
            if spec["datatype"] == INT64 and value < 0:
                value &= 0xFFFFFFFFFFFFFFFF
            setattr(metric, _FIELD[spec["datatype"]], value)
    return bytes(message.SerializeToString())

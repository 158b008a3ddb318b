"""The Sparkplug B payload schema, written from the Eclipse Sparkplug specification (3.0,
section 6.4 "Payload Definition", and its ``sparkplug_b.proto``), built as a protobuf
descriptor at run time so that no generated code or ``protoc`` is needed.

Only what readings need is declared: the payload's ``timestamp``, ``metrics`` and ``seq``; a
metric's name, alias, timestamp, datatype, flags and its scalar values. Data sets, templates,
property sets and metadata are left undeclared: protobuf keeps such fields as unknown fields
and they are never read (they are not readings).

    message Payload {
        optional uint64 timestamp = 1;   // ms since the epoch
        repeated Metric metrics   = 2;
        optional uint64 seq       = 3;
        optional string uuid      = 4;
        optional bytes  body      = 5;
        message Metric {
            optional string name = 1;  optional uint64 alias = 2;  optional uint64 timestamp = 3;
            optional uint32 datatype = 4;  optional bool is_historical = 5;
            optional bool is_transient = 6;  optional bool is_null = 7;
            oneof value {
                uint32 int_value = 10;  uint64 long_value = 11;  float float_value = 12;
                double double_value = 13;  bool boolean_value = 14;  string string_value = 15;
                bytes bytes_value = 16;   // 17 dataset, 18 template, 19 extension: undeclared
            }
        }
    }
"""

from __future__ import annotations

from typing import Any

from google.protobuf import (  # type: ignore[import-untyped]  # no stubs in the wheel
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# Sparkplug B data types (specification 6.4.16): the integer kinds that arrive as two's
# complement in an unsigned field, with the width that gives their sign.
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
SIGNED_BITS = {INT8: 32, INT16: 32, INT32: 32, INT64: 64}
"""Int8/16/32 are carried in ``int_value`` (uint32), Int64 in ``long_value`` (uint64)."""

_METRIC_FIELDS = (
    ("name", 1, _F.TYPE_STRING, None), ("alias", 2, _F.TYPE_UINT64, None),
    ("timestamp", 3, _F.TYPE_UINT64, None), ("datatype", 4, _F.TYPE_UINT32, None),
    ("is_historical", 5, _F.TYPE_BOOL, None), ("is_transient", 6, _F.TYPE_BOOL, None),
    ("is_null", 7, _F.TYPE_BOOL, None),
    ("int_value", 10, _F.TYPE_UINT32, 0), ("long_value", 11, _F.TYPE_UINT64, 0),
    ("float_value", 12, _F.TYPE_FLOAT, 0), ("double_value", 13, _F.TYPE_DOUBLE, 0),
    ("boolean_value", 14, _F.TYPE_BOOL, 0), ("string_value", 15, _F.TYPE_STRING, 0),
    ("bytes_value", 16, _F.TYPE_BYTES, 0),
)


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="edge_agent/sparkplug_b.proto", package="edge_agent.sparkplug_b", syntax="proto2"
    )
    payload = file.message_type.add(name="Payload")
    for name, number, kind in (("timestamp", 1, _F.TYPE_UINT64), ("seq", 3, _F.TYPE_UINT64),
                               ("uuid", 4, _F.TYPE_STRING), ("body", 5, _F.TYPE_BYTES)):
        payload.field.add(name=name, number=number, type=kind, label=_OPTIONAL)
    payload.field.add(name="metrics", number=2, type=_F.TYPE_MESSAGE, label=_REPEATED,
                      type_name=".edge_agent.sparkplug_b.Payload.Metric")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    for name, number, kind, oneof in _METRIC_FIELDS:
        field = metric.field.add(name=name, number=number, type=kind, label=_OPTIONAL)
        if oneof is not None:
            field.oneof_index = oneof
    return file


def _payload_class() -> Any:
    # A pool of our own: another library that registers Tahu's schema in the default pool
    # cannot clash with it.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("edge_agent.sparkplug_b.Payload"))


Payload: Any = _payload_class()
"""The Sparkplug B ``Payload`` message class (``Payload.FromString(data)``, ``Payload()``)."""

"""JSON in one place: orjson when installed (the ``fast`` extra), the standard library otherwise."""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson

    HAVE_ORJSON = True
except ImportError:  # pragma: no cover - exercised on boards without the wheel
    HAVE_ORJSON = False


def _std_loads(data: bytes | bytearray | memoryview | str) -> Any:
    return json.loads(bytes(data) if isinstance(data, memoryview) else data)


def _std_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


if HAVE_ORJSON:
    loads = orjson.loads

    def dumps(value: Any) -> str:
        return orjson.dumps(value).decode()

    def dumps_bytes(value: Any) -> bytes:
        return orjson.dumps(value)

else:  # pragma: no cover
    loads = _std_loads
    dumps = _std_dumps

    def dumps_bytes(value: Any) -> bytes:
        return _std_dumps(value).encode()


__all__ = ["HAVE_ORJSON", "dumps", "dumps_bytes", "loads"]

"""JSON in one place: orjson when installed (the ``fast`` extra), the standard library otherwise."""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - exercised on boards without the wheel
    orjson = None  # type: ignore[assignment]

if orjson is not None:
    loads = orjson.loads
    JSONDecodeError: type[ValueError] = orjson.JSONDecodeError

    def dumps(value: Any) -> str:
        return orjson.dumps(value).decode()

    def dumps_bytes(value: Any) -> bytes:
        return orjson.dumps(value)

else:  # pragma: no cover
    JSONDecodeError = json.JSONDecodeError

    def loads(data: bytes | bytearray | memoryview | str) -> Any:  # type: ignore[misc]
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)

    def dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)

    def dumps_bytes(value: Any) -> bytes:
        return dumps(value).encode()


__all__ = ["JSONDecodeError", "dumps", "dumps_bytes", "loads"]

"""Range checks on what a JSON document from the other end holds, at decode time: every
integer within 64 bits (what a store column, orjson and every consumer hold) and nothing
nested deeper than a document of the protocol ever is. Beyond that a document is refused with
a reason, so nothing downstream (a store write, an API answer) meets a value it cannot hold."""

from __future__ import annotations

from typing import Any

from cloud_sync.protocol.errors import ProtocolError

MAX_DEPTH = 16
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1


def check_values(doc: Any, what: str, max_depth: int = MAX_DEPTH) -> None:
    """``ProtocolError`` (``bad_number`` or ``too_deep``) unless ``doc`` keeps to the bounds."""
    pending: list[tuple[Any, int]] = [(doc, 1)]
    while pending:
        value, depth = pending.pop()
        if type(value) is int and not INT_MIN <= value <= INT_MAX:
            raise ProtocolError("bad_number", f"{what} holds the integer {str(value)[:40]}, beyond 64 bits")
        if isinstance(value, dict | list):
            if depth > max_depth:
                raise ProtocolError("too_deep", f"{what} nests deeper than {max_depth} levels")
            items = value.values() if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)

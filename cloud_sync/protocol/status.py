"""The retained status a device publishes (and its Last Will)."""

from __future__ import annotations

from typing import Any

from agent import codec
from cloud_sync.protocol.errors import ProtocolError
from cloud_sync.protocol.framing import VERSION
from cloud_sync.protocol.values import check_values

MAX_STATUS = 64 << 10


def encode_status(status: dict[str, Any]) -> bytes:
    return codec.dumps_bytes({"v": VERSION, **status})


def decode_status(payload: bytes) -> dict[str, Any]:
    """A status object with at least ``online`` (bool); ``ProtocolError`` otherwise."""
    if len(payload) > MAX_STATUS:
        raise ProtocolError("too_large", f"status of {len(payload)} bytes (at most {MAX_STATUS})")
    if not payload:
        raise ProtocolError("empty", "empty status (a cleared retained message)")
    try:
        doc = codec.loads(payload)
    except ValueError as exc:  # orjson and json decode errors are ValueErrors
        raise ProtocolError("bad_json", f"status is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
        raise ProtocolError("bad_status", "a status is an object with a boolean 'online'")
    check_values(doc, "status")
    return doc

"""Framing of data payloads: a three-byte header, then the body in its encoding.

    0xED  MAGIC      not a byte any JSON text starts with
    0x01  VERSION    format version of the body
    'j' | 'z' | 's'  ENCODING: JSON, zlib-compressed JSON, zstd-compressed JSON

A bare JSON object (first byte ``{``) is taken as version 1 JSON too, so ``mosquitto_pub`` can be
used by hand. Inflating is capped (``MAX_DECODED``): a compression bomb is refused.
"""

from __future__ import annotations

import zlib
from typing import Literal

from agent.extras import MissingExtra
from cloud_sync.protocol.errors import ProtocolError

try:
    import zstandard
except ImportError:  # the `zstd` extra is optional on both ends
    zstandard = None  # type: ignore[assignment]

MAGIC = 0xED
VERSION = 1
JSON, ZLIB, ZSTD = b"j", b"z", b"s"
Encoding = Literal["json", "zlib", "zstd"]
_ENCODING_BYTE: dict[str, bytes] = {"json": JSON, "zlib": ZLIB, "zstd": ZSTD}

MAX_DECODED = 16 << 20
"""A payload that inflates beyond this is refused (a compression bomb). The device's batches
stay below it: ``batch_bytes`` (before compression) is at most ``MAX_BATCH_BYTES``."""
MAX_BATCH_BYTES = 8 << 20


class Framer:
    """Frames bodies in one encoding; bodies under ``min_bytes`` go uncompressed."""

    def __init__(self, encoding: Encoding, min_bytes: int = 512) -> None:
        self.encoding = encoding
        self.min_bytes = min_bytes
        self._zstd = zstandard.ZstdCompressor(level=3) if encoding == "zstd" else None

    def frame(self, body: bytes) -> bytes:
        if self.encoding == "json" or len(body) < self.min_bytes:
            return bytes((MAGIC, VERSION)) + JSON + body
        if self._zstd is not None:
            return bytes((MAGIC, VERSION)) + ZSTD + bytes(self._zstd.compress(body))
        return bytes((MAGIC, VERSION)) + ZLIB + zlib.compress(body, 1)


def resolve_encoding(compression: str) -> Encoding:
    """``auto`` is zstd when the ``zstandard`` package is installed, zlib otherwise."""
    if compression == "auto":
        return "zstd" if zstandard is not None else "zlib"
    if compression == "none":
        return "json"
    if compression == "zstd" and zstandard is None:
        raise MissingExtra("zstd", "zstandard", "compression 'zstd'")
    if compression not in ("json", "zlib", "zstd"):
        raise ValueError(f"unknown compression {compression!r}: use auto, zstd, zlib or none")
    return compression  # type: ignore[return-value]


def unframe(payload: bytes) -> bytes:
    """The JSON body of a data payload, whatever its encoding; ``ProtocolError`` if unreadable."""
    if not payload:
        raise ProtocolError("empty", "the payload is empty")
    if payload[0] == 0x7B:  # '{': unframed JSON, version 1
        return payload
    if len(payload) < 3 or payload[0] != MAGIC:
        raise ProtocolError("bad_header", f"payload starts {payload[:8]!r}: no sync header")
    if payload[1] != VERSION:
        raise ProtocolError("bad_version", f"format version {payload[1]} (this ingest reads {VERSION})")
    kind, body = payload[2:3], payload[3:]
    if kind == JSON:
        return body
    if kind == ZLIB:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(body, MAX_DECODED)
        except zlib.error as exc:
            raise ProtocolError("bad_compression", f"zlib: {exc}") from None
        if inflater.unconsumed_tail:
            raise ProtocolError("too_large", f"inflates beyond {MAX_DECODED} bytes")
        return out
    if kind == ZSTD:
        if zstandard is None:
            raise ProtocolError("unsupported_encoding", "zstd payload, but zstandard is not installed")
        try:
            size = zstandard.frame_content_size(body)
            if size > MAX_DECODED:
                raise ProtocolError("too_large", f"inflates to {size} bytes (at most {MAX_DECODED})")
            # A frame that says how large it is gets one exact allocation.
            out = zstandard.ZstdDecompressor().decompress(body) if size >= 0 else _zstd_stream(body)
        except zstandard.ZstdError as exc:
            raise ProtocolError("bad_compression", f"zstd: {exc}") from None
        return out
    raise ProtocolError("unsupported_encoding", f"encoding byte {kind!r}")


def _zstd_stream(body: bytes) -> bytes:
    """A zstd frame that does not say its size, read in steps up to ``MAX_DECODED``."""
    assert zstandard is not None
    chunks, total = [], 0
    with zstandard.ZstdDecompressor().stream_reader(body) as reader:
        while chunk := reader.read(1 << 20):
            total += len(chunk)
            if total > MAX_DECODED:
                raise ProtocolError("too_large", f"inflates beyond {MAX_DECODED} bytes")
            chunks.append(chunk)
    return b"".join(chunks)

"""The sync wire protocol, in one place: topics, payload framing, encodings and validation.

Both ends import this module and nothing else about the wire. ``docs/protocol.md`` describes the
same thing for someone writing another client.

Data payloads are framed, so the receiver never guesses an encoding (MQTT 3.1.1 has no content
type): three header bytes, then the body::

    0xED  MAGIC      not a byte any JSON text starts with
    0x01  VERSION    format version of the body
    'j' | 'z' | 's'  ENCODING: JSON, zlib-compressed JSON, zstd-compressed JSON

The body is one JSON object (see ``DataBatch``). A bare JSON object (first byte ``{``) is taken
as version 1 JSON too, so ``mosquitto_pub`` can be used by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeGuard

from agent import codec
from agent.extras import MissingExtra

try:
    import zstandard
except ImportError:  # the `zstd` extra is optional on both ends
    zstandard = None  # type: ignore[assignment]

MAGIC = 0xED
VERSION = 1
JSON, ZLIB, ZSTD = b"j", b"z", b"s"
Encoding = Literal["json", "zlib", "zstd"]
_ENCODING_BYTE: dict[str, bytes] = {"json": JSON, "zlib": ZLIB, "zstd": ZSTD}

DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
STREAM_MAX = 128
MAX_RECORDS = 100_000
"""At most this many records in one data message."""
MAX_DROPPED = 1_000
"""At most this many dropped ranges announced in one data message."""
MAX_DECODED = 64 << 20
"""A payload that inflates beyond this is refused (a compression bomb)."""
MAX_SEQ = (1 << 63) - 1

Kind = Literal["data", "status", "ack"]
KINDS: tuple[Kind, ...] = ("data", "status", "ack")


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``reason`` is a short stable label for
    counting (``bad_json``, ``bad_header``...), ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


# -- topics ------------------------------------------------------------------------------------


def topic(prefix: str, device_id: str, kind: Kind) -> str:
    """``<prefix>/<device-id>/<kind>``."""
    return f"{prefix}/{device_id}/{kind}"


def subscription(prefix: str, kind: Kind, share_group: str | None = None) -> str:
    """The filter for every device's ``kind`` topic, shared across a group of ingest workers."""
    base = f"{prefix}/+/{kind}"
    return f"$share/{share_group}/{base}" if share_group else base


def parse_topic(prefix: str, name: str) -> tuple[str, Kind]:
    """``(device_id, kind)`` of a topic under ``prefix``; ``ProtocolError`` if it is not one."""
    head = prefix + "/"
    if not name.startswith(head):
        raise ProtocolError("bad_topic", f"{name!r} is not under {prefix!r}")
    parts = name[len(head) :].split("/")
    if len(parts) != 2 or parts[1] not in KINDS:
        raise ProtocolError("bad_topic", f"{name!r} is not {prefix}/<device-id>/(data|status|ack)")
    device_id, kind = parts
    check_device_id(device_id)
    return device_id, kind  # type: ignore[return-value]  # checked against KINDS above


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.fullmatch(device_id):
        raise ProtocolError("bad_device_id", f"{device_id[:80]!r}: a device id is 1 to 64 of A-Z a-z 0-9 _ -")
    return device_id


# -- data batches ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DroppedRange:
    """Records ``first..last`` that the device let go without sending (``reason``), announced
    so that the cloud's ack can move past them."""

    first: int
    last: int
    reason: str


RawRow = tuple[int, str, float, str]
"""``(seq, stream, ts, data as JSON text)``: a record as the outbox stores it, as it travels, and
as the cloud store keeps it."""


class Record(NamedTuple):
    """One record as both ends keep it: ``data`` is the record's object as JSON text, which the
    outbox stores, the encoder splices into a payload and the cloud store stores. The ingest's
    ``decode_batch`` makes plain tuples of this shape (``RawRow``): it makes 100,000s a second,
    and a named tuple costs a Python-level call each."""

    seq: int
    stream: str
    ts: float
    data: str


@dataclass(frozen=True)
class BadRecord:
    """A record whose ``seq`` is readable but whose other fields are not: kept aside at the
    cloud with ``reason``, and still accounted for, so that it never holds the ack back."""

    seq: int
    reason: str
    raw: Any


@dataclass
class DataBatch:
    """The decoded body of a data message."""

    device_id: str
    epoch: str
    released: int
    """The device holds nothing at or below this seq any more (the cloud's last ack it saw)."""
    records: list[RawRow] = field(default_factory=list)
    """``(seq, stream, ts, data as JSON text)`` of each valid record, in message order."""
    bad: list[BadRecord] = field(default_factory=list)
    dropped: list[DroppedRange] = field(default_factory=list)
    probe: int = 0
    """Echoed in the ack: tells the device the ingest got this message (and so all before it)."""


class Encoder:
    """Builds data payloads straight from outbox rows, without parsing their ``data`` again."""

    def __init__(self, device_id: str, epoch: str, compression: str = "auto", min_bytes: int = 512):
        self.device_id = check_device_id(device_id)
        self.epoch = epoch
        self.encoding = resolve_encoding(compression)
        self.min_bytes = min_bytes
        self._head = f'{{"v":{VERSION},"device":"{device_id}","epoch":{codec.dumps(epoch)},'
        self._streams: dict[str, str] = {}
        self._zstd = zstandard.ZstdCompressor(level=3) if self.encoding == "zstd" else None

    def body(
        self, rows: Sequence[RawRow], released: int, dropped: Iterable[DroppedRange] = (), probe: int = 0
    ) -> bytes:
        streams = self._streams
        parts = []
        for seq, stream, ts, data in rows:
            quoted = streams.get(stream)
            if quoted is None:
                quoted = streams[stream] = codec.dumps(stream)
            number = repr(float(ts)) if math.isfinite(ts) else "null"
            parts.append(f'{{"seq":{seq},"stream":{quoted},"ts":{number},"data":{data}}}')
        drops = ",".join(
            f'{{"first":{d.first},"last":{d.last},"reason":{codec.dumps(d.reason)}}}' for d in dropped
        )
        tail = f',"probe":{probe}}}' if probe else "}"
        return (
            f'{self._head}"released":{released},"records":[{",".join(parts)}],"dropped":[{drops}]{tail}'
        ).encode()

    def frame(self, body: bytes) -> bytes:
        """The payload for ``body``: compressed when that is on and worth it."""
        if self.encoding == "json" or len(body) < self.min_bytes:
            return bytes((MAGIC, VERSION)) + JSON + body
        if self._zstd is not None:
            return bytes((MAGIC, VERSION)) + ZSTD + self._zstd.compress(body)
        return bytes((MAGIC, VERSION)) + ZLIB + zlib.compress(body, 1)

    def encode(
        self, rows: Sequence[RawRow], released: int, dropped: Iterable[DroppedRange] = (), probe: int = 0
    ) -> bytes:
        return self.frame(self.body(rows, released, dropped, probe))


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


def decode_batch(device_id: str, payload: bytes) -> DataBatch:
    """Decode and validate a data message from ``device_id`` (taken from its topic).

    Raises ``ProtocolError`` for a message that cannot be accounted for at all; a record with a
    readable ``seq`` but bad fields comes back in ``DataBatch.bad`` instead.
    """
    body = unframe(payload)
    try:
        doc = codec.loads(body)
    except ValueError as exc:  # orjson and json decode errors are ValueErrors
        raise ProtocolError("bad_json", f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("bad_body", "the body is not a JSON object")
    if doc.get("v", VERSION) != VERSION:
        raise ProtocolError("bad_version", f"body version {doc.get('v')!r}")
    if doc.get("device", device_id) != device_id:
        raise ProtocolError("device_mismatch", f"body names device {str(doc.get('device'))[:80]!r}")
    epoch = doc.get("epoch", "")
    released = doc.get("released", 0)
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise ProtocolError("bad_body", "epoch: not a string of at most 64 characters")
    if not _is_seq(released, allow_zero=True):
        raise ProtocolError("bad_body", "released: not a sequence number")
    records = doc.get("records", [])
    dropped = doc.get("dropped", [])
    probe = doc.get("probe", 0)
    if not _is_seq(probe, allow_zero=True):
        raise ProtocolError("bad_body", "probe: not a non-negative integer")
    if not isinstance(records, list) or len(records) > MAX_RECORDS:
        raise ProtocolError("bad_body", f"records: not a list of at most {MAX_RECORDS}")
    if not isinstance(dropped, list) or len(dropped) > MAX_DROPPED:
        raise ProtocolError("bad_body", f"dropped: not a list of at most {MAX_DROPPED}")
    batch = DataBatch(
        device_id, epoch, released, dropped=[_dropped(i, d) for i, d in enumerate(dropped)], probe=probe
    )
    _records(batch, records)
    return batch


def _records(batch: DataBatch, records: list[Any]) -> None:
    """Validate each record into ``batch``: the ingest's hottest loop, so it keeps to builtins
    and makes one plain tuple per record, with ``data`` dumped back to compact JSON text (what
    the store keeps; orjson makes that cheaper than any Python-side slicing of the body)."""
    keep, dumps, isfinite = batch.records.append, codec.dumps, math.isfinite
    for index, item in enumerate(records):
        if type(item) is not dict:
            raise ProtocolError("bad_record", f"records[{index}]: not an object")
        seq, stream, ts, data = item.get("seq"), item.get("stream"), item.get("ts"), item.get("data")
        if type(seq) is not int or not 0 < seq <= MAX_SEQ:
            raise ProtocolError(
                "bad_record", f"records[{index}].seq: {str(seq)[:40]!r} is not a sequence number"
            )
        try:
            if (
                type(stream) is str
                and 0 < len(stream) <= STREAM_MAX
                and (type(ts) is float or type(ts) is int)
                and isfinite(ts)
                and type(data) is dict
            ):
                keep((seq, stream, ts if type(ts) is float else float(ts), dumps(data)))
                continue
        except OverflowError:  # an integer ts beyond any float (the stdlib parser allows one)
            pass
        batch.bad.append(_bad_record(index, item, seq))


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _is_seq(value: Any, allow_zero: bool = False) -> TypeGuard[int]:
    return type(value) is int and (0 if allow_zero else 1) <= value <= MAX_SEQ


def _bad_record(index: int, item: dict[str, Any], seq: int) -> BadRecord:
    stream, ts = item.get("stream"), item.get("ts")
    if not isinstance(stream, str) or not 0 < len(stream) <= STREAM_MAX:
        return BadRecord(seq, f"records[{index}].stream: not a name of 1 to {STREAM_MAX} characters", item)
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not _finite(ts):
        return BadRecord(seq, f"records[{index}].ts: not a finite number", item)
    return BadRecord(seq, f"records[{index}].data: not an object", item)


def _dropped(index: int, item: Any) -> DroppedRange:
    if not isinstance(item, dict):
        raise ProtocolError("bad_body", f"dropped[{index}]: not an object")
    first, last, reason = item.get("first"), item.get("last"), item.get("reason", "unknown")
    if not (type(first) is int and type(last) is int and 0 < first <= last <= MAX_SEQ):
        raise ProtocolError("bad_body", f"dropped[{index}]: first and last are not a range of seqs")
    if not isinstance(reason, str) or not 0 < len(reason) <= 64:
        raise ProtocolError("bad_body", f"dropped[{index}].reason: not a short string")
    return DroppedRange(first, last, reason)


# -- acks and status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """What the ingest has accounted for: every seq up to ``seq`` (stored, kept aside or
    announced dropped) of the device's outbox ``epoch``; ``max_seq`` is the highest seen."""

    seq: int
    epoch: str
    max_seq: int = 0
    at: float = 0.0
    probe: int = 0
    """The highest ``probe`` of the device's messages in the flush this ack follows."""

    def encode(self) -> bytes:
        return codec.dumps_bytes(
            {
                "v": VERSION,
                "seq": self.seq,
                "epoch": self.epoch,
                "max_seq": self.max_seq,
                "at": self.at,
                "probe": self.probe,
            }
        )


def decode_ack(payload: bytes) -> Ack:
    try:
        doc = codec.loads(payload)
    except ValueError as exc:  # orjson and json decode errors are ValueErrors
        raise ProtocolError("bad_json", f"ack is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not _is_seq(doc.get("seq"), allow_zero=True):
        raise ProtocolError("bad_ack", "an ack is an object with a seq")
    epoch = doc.get("epoch", "")
    max_seq = doc.get("max_seq", doc["seq"])
    at = doc.get("at", 0.0)
    probe = doc.get("probe", 0)
    if (
        not isinstance(epoch, str)
        or not _is_seq(max_seq, allow_zero=True)
        or not _is_seq(probe, allow_zero=True)
    ):
        raise ProtocolError("bad_ack", "epoch, max_seq or probe of the wrong type")
    seconds = float(at) if type(at) in (int, float) else 0.0
    return Ack(doc["seq"], epoch, max_seq, seconds, probe)  # all checked by _is_seq above


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
    return doc


# -- cloud to device: desired config, its reported result, commands and replies -----------------
# (docs/protocol.md, "Remote configuration and commands"). Both ends use these; the device's
# handling is agent/remote_config.py and agent/commands.py, the console's cloud_sync/console/remote.py.

MAX_DESIRED = 256 << 10
"""A desired-config document is at most this many bytes..."""
MAX_CONFIG_TEXT = 128 << 10
"""...and the TOML it carries at most this many characters."""
MAX_COMMAND = 16 << 10
MAX_REPLY = 256 << 10
MAX_REPORT_ERRORS = 200
COMMAND_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
COMMAND_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
REQUESTER = re.compile(r"[A-Za-z0-9_-]{1,64}")
SIGNING_CONTEXT = b"edge-agent config v1\n"
"""Prefix of the bytes a desired config's signature covers (see ``signed_bytes``)."""
CONFIG_RESULTS = ("applying", "applied", "rejected", "rolled_back", "superseded")


def config_topic(prefix: str, device_id: str, which: Literal["desired", "reported"]) -> str:
    """``<prefix>/<device-id>/config/desired`` (cloud → device, retained) or ``.../reported``."""
    return f"{prefix}/{device_id}/config/{which}"


def command_topic(prefix: str, device_id: str, name: str) -> str:
    """``<prefix>/<device-id>/cmd/<name>``."""
    return f"{prefix}/{device_id}/cmd/{name}"


def reply_topic(prefix: str, device_id: str, requester: str | None = None) -> str:
    """Where a device answers: ``<prefix>/<device-id>/reply[/<requester>]`` (under its own id, so
    a broker ACL can keep each device to ``<prefix>/<its-id>/#``)."""
    base = f"{prefix}/{device_id}/reply"
    return f"{base}/{requester}" if requester else base


def is_reply_topic(prefix: str, device_id: str, name: str) -> bool:
    """True if ``name`` is this device's reply topic or below it (no wildcards)."""
    base = reply_topic(prefix, device_id)
    return (name == base or name.startswith(base + "/")) and not any(c in name for c in "+#\0")


def parse_remote_topic(prefix: str, name: str) -> tuple[str, str, str]:
    """``(device_id, kind, rest)`` of a ``config/...``, ``cmd/...`` or ``reply[/...]`` topic,
    e.g. ``("gw-1", "config", "reported")``; ``ProtocolError`` otherwise."""
    head = prefix + "/"
    parts = name[len(head):].split("/", 2) if name.startswith(head) else []
    if len(parts) < 2 or parts[1] not in ("config", "cmd", "reply"):
        raise ProtocolError("bad_topic", f"{name[:200]!r} is not {prefix}/<device-id>/(config|cmd|reply)/…")
    check_device_id(parts[0])
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


def _json_object(payload: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise ProtocolError("too_large", f"{what} of {len(payload)} bytes (at most {limit})")
    try:
        doc = codec.loads(payload)
    except ValueError as exc:  # orjson and json decode errors are ValueErrors
        raise ProtocolError("bad_json", f"{what} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("bad_body", f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True)
class DesiredConfig:
    """A versioned config document for one device (or any device, without ``device``)."""

    version: int
    config: str
    """The agent config as TOML text."""
    device: str | None = None
    issued_at: int | None = None
    issued_by: str | None = None
    signature: str | None = None
    """Base64 Ed25519 signature over ``signed_bytes()``; None if unsigned."""

    def fields(self) -> dict[str, Any]:
        """The document's fields but the signature (what a signature covers)."""
        doc: dict[str, Any] = {"v": VERSION, "version": self.version, "config": self.config}
        for key in ("device", "issued_at", "issued_by"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        return doc

    def signed_bytes(self) -> bytes:
        """``SIGNING_CONTEXT`` + the fields as canonical JSON: keys sorted, no spaces, UTF-8 (not
        ASCII-escaped). The values are integers and strings only, so every JSON library agrees."""
        return SIGNING_CONTEXT + canonical_json(self.fields())

    def digest(self) -> str:
        """SHA-256 of the signed bytes: the document's identity, signature aside."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()

    def encode(self) -> bytes:
        doc = self.fields()
        if self.signature is not None:
            doc["signature"] = self.signature
        return codec.dumps_bytes(doc)


def canonical_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode_desired(payload: bytes) -> DesiredConfig:
    """A desired-config document; ``ProtocolError`` naming the field otherwise."""
    doc = _json_object(payload, "the desired config", MAX_DESIRED)
    unknown = sorted(set(doc) - {"v", "version", "config", "device", "issued_at", "issued_by", "signature"})
    if unknown:
        raise ProtocolError("bad_body", f"{unknown[0][:40]}: unknown field")
    if doc.get("v", VERSION) != VERSION:
        raise ProtocolError("bad_version", f"v: format {str(doc.get('v'))[:20]} (this agent reads {VERSION})")
    version, config = doc.get("version"), doc.get("config")
    if not _is_seq(version):
        raise ProtocolError("bad_body", "version: not a positive integer")
    if not isinstance(config, str) or len(config) > MAX_CONFIG_TEXT:
        raise ProtocolError("bad_body", f"config: not TOML text of at most {MAX_CONFIG_TEXT} characters")
    device, issued_at = doc.get("device"), doc.get("issued_at")
    issued_by, signature = doc.get("issued_by"), doc.get("signature")
    if device is not None and not (isinstance(device, str) and DEVICE_ID.fullmatch(device)):
        raise ProtocolError("bad_body", "device: not a device id")
    if issued_at is not None and not _is_seq(issued_at, allow_zero=True):
        raise ProtocolError("bad_body", "issued_at: not whole Unix seconds")
    if issued_by is not None and not (isinstance(issued_by, str) and len(issued_by) <= 128):
        raise ProtocolError("bad_body", "issued_by: not a string of at most 128 characters")
    if signature is not None and not (isinstance(signature, str) and len(signature) <= 256):
        raise ProtocolError("bad_body", "signature: not a base64 string")
    return DesiredConfig(version, config, device, issued_at, issued_by, signature)


@dataclass(frozen=True)
class ConfigReport:
    """What a device did with a desired config, retained on ``.../config/reported``."""

    version: int | None
    """The document's version (None when it could not be read at all)."""
    result: str
    """``applying`` (running it, within the grace period), ``applied``, ``rejected``,
    ``rolled_back`` or ``superseded`` (the operator's file changed on the device since)."""
    errors: list[dict[str, str]] = field(default_factory=list)
    """Every problem, each ``{"path": "modules[0].with.every", "reason": "..."}``."""
    detail: str = ""
    running: dict[str, Any] = field(default_factory=dict)
    """The config the device runs now: ``{"source": "file"|"remote", "version": N|null}``."""
    digest: str | None = None
    at: float = 0.0

    def encode(self) -> bytes:
        return codec.dumps_bytes({
            "v": VERSION, "version": self.version, "result": self.result,
            "errors": self.errors[:MAX_REPORT_ERRORS], "detail": self.detail[:2000],
            "running": self.running, "digest": self.digest, "at": self.at,
        })


def decode_report(payload: bytes) -> ConfigReport:
    doc = _json_object(payload, "a config report", MAX_REPLY)
    version, result, errors = doc.get("version"), doc.get("result"), doc.get("errors", [])
    if version is not None and not _is_seq(version):
        raise ProtocolError("bad_report", "version: not a positive integer")
    if result not in CONFIG_RESULTS:
        raise ProtocolError("bad_report", f"result: not one of {', '.join(CONFIG_RESULTS)}")
    if not isinstance(errors, list) or not all(
        isinstance(e, dict) and isinstance(e.get("path", ""), str) and isinstance(e.get("reason"), str)
        for e in errors
    ):
        raise ProtocolError("bad_report", "errors: not a list of {path, reason}")
    running = doc.get("running") if isinstance(doc.get("running"), dict) else {}
    at = doc.get("at") if type(doc.get("at")) in (int, float) else 0.0
    digest = doc.get("digest") if isinstance(doc.get("digest"), str) else None
    detail = doc.get("detail") if isinstance(doc.get("detail"), str) else ""
    kept = [{"path": e.get("path", ""), "reason": e["reason"]} for e in errors[:MAX_REPORT_ERRORS]]
    return ConfigReport(version, result, kept, str(detail), running or {}, digest, float(at or 0.0))


@dataclass(frozen=True)
class Command:
    """A request on ``<prefix>/<device-id>/cmd/<name>``. On MQTT 5 the reply goes to the
    message's Response Topic with its Correlation Data; on 3.1.1 to ``reply_to``."""

    name: str
    id: str
    args: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    expires_at: float | None = None
    """Unix seconds (the device's clock); a command received later is not executed."""

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"v": VERSION, "id": self.id, "args": self.args}
        if self.reply_to is not None:
            doc["reply_to"] = self.reply_to
        if self.expires_at is not None:
            doc["expires_at"] = self.expires_at
        return codec.dumps_bytes(doc)


def decode_command(name: str, payload: bytes) -> Command:
    """A command; ``ProtocolError`` naming the field otherwise (the caller replies with it)."""
    if not COMMAND_NAME.fullmatch(name):
        raise ProtocolError("bad_command", f"{name[:40]!r}: not a command name")
    doc = _json_object(payload, "the command", MAX_COMMAND)
    unknown = sorted(set(doc) - {"v", "id", "args", "reply_to", "expires_at"})
    if unknown:
        raise ProtocolError("bad_command", f"{unknown[0][:40]}: unknown field")
    command_id, args = doc.get("id"), doc.get("args", {})
    reply_to, expires_at = doc.get("reply_to"), doc.get("expires_at")
    if not (isinstance(command_id, str) and COMMAND_ID.fullmatch(command_id)):
        raise ProtocolError("bad_command", "id: 1 to 64 of A-Z a-z 0-9 _ . : -")
    if not isinstance(args, dict):
        raise ProtocolError("bad_command", "args: not an object")
    if reply_to is not None and not (isinstance(reply_to, str) and 0 < len(reply_to) <= 256):
        raise ProtocolError("bad_command", "reply_to: not a topic")
    if expires_at is not None and (type(expires_at) not in (int, float) or not math.isfinite(expires_at)):
        raise ProtocolError("bad_command", "expires_at: not Unix seconds")
    return Command(name, command_id, args, reply_to, None if expires_at is None else float(expires_at))


def encode_reply(command_id: str | None, result: Any = None, error: tuple[str, str] | None = None) -> bytes:
    """``{"v":1,"id":...,"ok":true,"result":...}`` or ``{..."ok":false,"error":{"code","message"}}``."""
    doc: dict[str, Any] = {"v": VERSION, "id": command_id, "ok": error is None}
    if error is None:
        doc["result"] = result
    else:
        doc["error"] = {"code": error[0], "message": error[1][:2000]}
    return codec.dumps_bytes(doc)


def decode_reply(payload: bytes) -> dict[str, Any]:
    doc = _json_object(payload, "a reply", MAX_REPLY)
    if not isinstance(doc.get("ok"), bool):
        raise ProtocolError("bad_reply", "ok: not a boolean")
    return doc

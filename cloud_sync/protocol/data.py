"""Data batches (device to cloud) and the acks that answer them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeGuard

from agent import codec
from cloud_sync.protocol.errors import ProtocolError
from cloud_sync.protocol.framing import VERSION, Framer, resolve_encoding, unframe
from cloud_sync.protocol.topics import check_device_id

STREAM_MAX = 128
MAX_RECORDS = 100_000
"""At most this many records in one data message."""
MAX_DROPPED = 1_000
"""At most this many dropped ranges announced in one data message."""
MAX_SEQ = (1 << 63) - 1
MAX_RECORD_DATA = 1 << 20
"""A record whose ``data`` is longer than this as JSON is a bad record (kept aside, 4 KiB of it):
one message may not make the cloud store megabytes a record out of a few compressed bytes."""


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
        self._framer = Framer(self.encoding, min_bytes)

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
        return self._framer.frame(body)

    def encode(
        self, rows: Sequence[RawRow], released: int, dropped: Iterable[DroppedRange] = (), probe: int = 0
    ) -> bytes:
        return self.frame(self.body(rows, released, dropped, probe))


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
                and len(text := dumps(data)) <= MAX_RECORD_DATA
            ):
                keep((seq, stream, ts if type(ts) is float else float(ts), text))
                continue
        except (OverflowError, TypeError, ValueError):
            pass  # a ts beyond any float, data nested or numbered beyond what JSON text holds
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
    data = item.get("data")
    if type(data) is not dict:
        return BadRecord(seq, f"records[{index}].data: not an object", item)
    # too large, or not writable as JSON text: kept without it (it could be megabytes)
    kept = {"seq": seq, "stream": stream, "ts": ts, "data": None}
    return BadRecord(seq, f"records[{index}].data: over {MAX_RECORD_DATA} bytes as JSON, or nested or "
                     "numbered beyond what JSON text holds", kept)


def _dropped(index: int, item: Any) -> DroppedRange:
    if not isinstance(item, dict):
        raise ProtocolError("bad_body", f"dropped[{index}]: not an object")
    first, last, reason = item.get("first"), item.get("last"), item.get("reason", "unknown")
    if not (type(first) is int and type(last) is int and 0 < first <= last <= MAX_SEQ):
        raise ProtocolError("bad_body", f"dropped[{index}]: first and last are not a range of seqs")
    if not isinstance(reason, str) or not 0 < len(reason) <= 64:
        raise ProtocolError("bad_body", f"dropped[{index}].reason: not a short string")
    return DroppedRange(first, last, reason)


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

"""Per-device accounting at the cloud: which seqs are accounted for, and the ack that follows.

Pure logic: the store loads each touched device's ``DeviceState`` inside its write transaction,
``plan_flush`` works out what to insert and how every state moves, the store writes both and
commits, and the ingest publishes the acks. Keeping the state in the store (not in one worker's
memory) is what lets several ingest workers share a subscription.

A seq is *accounted for* once it is stored, kept aside as a bad record, or announced by the
device as dropped. The ack is the highest seq up to which every seq is accounted for; seqs
accounted for beyond a hole are kept as ``ranges`` until the hole fills.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any

from agent import codec
from cloud_sync.protocol import DataBatch, RawRow

Range = tuple[int, int]
MAX_RANGES = 10_000


@dataclass
class DeviceState:
    """One row of the ``devices`` table."""

    device_id: str
    epoch: str = ""
    acked: int = 0
    max_seq: int = 0
    ranges: list[Range] = field(default_factory=list)
    """Accounted-for seqs above ``acked``, sorted, disjoint, not touching."""
    records: int = 0
    duplicates: int = 0
    bad_records: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    """Seqs the cloud gave up waiting for (the device no longer had them)."""
    messages: int = 0
    first_seen: float | None = None
    last_seen: float | None = None
    last_sync: float | None = None
    online: bool | None = None
    status: dict[str, Any] = field(default_factory=dict)
    status_at: float | None = None

    def unaccounted(self, first: int, last: int) -> int:
        """How many of ``first..last`` are not accounted for yet."""
        first = max(first, self.acked + 1)
        if first > last:
            return 0
        count = last - first + 1
        ranges = self.ranges
        index = max(0, bisect.bisect_left(ranges, (first, first)) - 1)
        while index < len(ranges) and ranges[index][0] <= last:
            low, high = ranges[index]
            count -= max(0, min(high, last) - max(low, first) + 1)
            index += 1
        return count

    @property
    def missing(self) -> int:
        """Seqs between the ack and the highest seen that have not arrived (yet)."""
        covered = sum(last - first + 1 for first, last in self.ranges)
        return max(0, self.max_seq - self.acked - covered)

    def add(self, first: int, last: int) -> None:
        """Mark ``first..last`` accounted for; move the ack over whatever became contiguous."""
        self.max_seq = max(self.max_seq, last)
        if last <= self.acked:
            return
        first = max(first, self.acked + 1)
        ranges = self.ranges
        index = bisect.bisect_left(ranges, (first, first))
        if index and ranges[index - 1][1] >= first - 1:
            index -= 1
        end = index
        while end < len(ranges) and ranges[end][0] <= last + 1:
            first, last = min(first, ranges[end][0]), max(last, ranges[end][1])
            end += 1
        ranges[index:end] = [(first, last)]
        self._advance()
        if len(ranges) > MAX_RANGES:  # a device sending scattered seqs; keep the newest holes
            self.jump(ranges[len(ranges) - MAX_RANGES][0] - 1)

    def _advance(self) -> None:
        if self.ranges and self.ranges[0][0] <= self.acked + 1:
            self.acked = max(self.acked, self.ranges.pop(0)[1])

    def jump(self, to: int) -> None:
        """Give up on every seq up to ``to`` that has not arrived: counted as ``lost``."""
        if to <= self.acked:
            return
        self.lost += (
            to - self.acked - sum(min(last, to) - first + 1 for first, last in self.ranges if first <= to)
        )
        self.ranges = [(max(f, to + 1), last) for f, last in self.ranges if last > to]
        self.acked = to
        self.max_seq = max(self.max_seq, to)
        self._advance()

    def as_row(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "epoch": self.epoch,
            "acked_seq": self.acked,
            "max_seq": self.max_seq,
            "ranges": codec.dumps(self.ranges),
            "records": self.records,
            "duplicates": self.duplicates,
            "bad_records": self.bad_records,
            "dropped": codec.dumps(self.dropped),
            "lost": self.lost,
            "messages": self.messages,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "last_sync": self.last_sync,
            "online": self.online,
            "status": codec.dumps(self.status),
            "status_at": self.status_at,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DeviceState:
        return cls(
            device_id=row["device_id"],
            epoch=row["epoch"] or "",
            acked=row["acked_seq"] or 0,
            max_seq=row["max_seq"] or 0,
            ranges=[tuple(r) for r in codec.loads(row["ranges"] or "[]")],
            records=row["records"] or 0,
            duplicates=row["duplicates"] or 0,
            bad_records=row["bad_records"] or 0,
            dropped=codec.loads(row["dropped"] or "{}"),
            lost=row["lost"] or 0,
            messages=row["messages"] or 0,
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            last_sync=row["last_sync"],
            online=None if row["online"] is None else bool(row["online"]),
            status=codec.loads(row["status"] or "{}"),
            status_at=row["status_at"],
        )


@dataclass(frozen=True)
class Quarantined:
    """A message (or one record of it) kept aside at the cloud, with why."""

    topic: str
    reason: str
    detail: str
    payload: bytes
    size: int
    device_id: str | None = None
    seq: int | None = None


@dataclass
class Flush:
    """Everything one store transaction writes."""

    received_at: float = 0.0
    batches: list[tuple[str, list[RawRow]]] = field(default_factory=list)
    """``(device_id, records)`` of each data message taken, in order: to insert (with
    ``received_at``) unless already there. The decoded lists themselves, not copies: a flush
    makes no object per record of its own."""
    attempted: dict[str, int] = field(default_factory=dict)
    dropped: list[tuple[str, int, int, str, float]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    acks: set[str] = field(default_factory=set)
    """Devices whose ack should be published after the commit."""
    probes: dict[str, int] = field(default_factory=dict)
    """The highest probe each device sent in this flush, echoed in its ack."""
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by


@dataclass(frozen=True)
class Status:
    device_id: str
    doc: dict[str, Any]
    at: float


Incoming = DataBatch | Status | Quarantined


def plan_flush(
    states: dict[str, DeviceState], items: list[tuple[str, Incoming]], now: float | None = None
) -> Flush:
    """Apply decoded messages ``(topic, item)`` to the device ``states`` (changed in place) and
    return what to write. ``states`` holds a state for every device named by ``items``."""
    now = time.time() if now is None else now
    flush = Flush(received_at=now)
    for topic, item in items:
        if isinstance(item, Quarantined):
            flush.quarantined.append(item)
            flush.count(f"quarantined.{item.reason}")
            if item.device_id in states:
                states[item.device_id].last_seen = now
            continue
        state = states[item.device_id]
        state.last_seen = now
        if state.first_seen is None:
            state.first_seen = now
        if isinstance(item, Status):
            _status(state, item)
        else:
            _batch(state, topic, item, flush, now)
    return flush


def _status(state: DeviceState, status: Status) -> None:
    if status.doc.get("online") is False:
        state.status = {**state.status, "online": False}  # a Will: keep the last figures
    else:
        state.status = status.doc
    state.online = bool(status.doc.get("online"))
    state.status_at = status.at


def _batch(state: DeviceState, topic: str, batch: DataBatch, flush: Flush, now: float) -> None:
    flush.acks.add(state.device_id)
    if batch.probe:
        flush.probes[state.device_id] = max(batch.probe, flush.probes.get(state.device_id, 0))
    state.messages += 1
    flush.count("messages")
    if not _admit(state, topic, batch, flush):
        return
    before = state.acked
    if batch.released > state.acked:
        state.jump(batch.released)  # the device let these go: they are not coming any more
    flush.batches.append((state.device_id, batch.records))
    flush.attempted[state.device_id] = flush.attempted.get(state.device_id, 0) + len(batch.records)
    for bad in batch.bad:
        flush.quarantined.append(
            Quarantined(
                topic,
                "bad_record",
                bad.reason,
                _kept(bad.raw),
                0,
                state.device_id,
                bad.seq,
            )
        )
        state.bad_records += 1
        flush.count("quarantined.bad_record")
    for dropped in batch.dropped:
        # counted by the seqs it newly accounts for: ranges that overlap (in one message or
        # across messages) count each seq once, so no count exceeds the seqs there are
        newly = state.unaccounted(dropped.first, dropped.last)
        state.add(dropped.first, dropped.last)
        if newly > 0:
            state.dropped[dropped.reason] = state.dropped.get(dropped.reason, 0) + newly
            flush.dropped.append((state.device_id, dropped.first, dropped.last, dropped.reason, now))
    for first, last in _runs([r[0] for r in batch.records] + [b.seq for b in batch.bad]):
        state.add(first, last)
    if state.acked > before:
        state.last_sync = now


def _kept(raw: Any) -> bytes:
    """What is kept of a bad record (4 KiB of its JSON): one that JSON text cannot hold (nested
    deeper than the encoder goes, inside a field that was refused for another reason) is kept as
    a note, so that the rest of its message is still stored."""
    try:
        return codec.dumps_bytes(raw)[:4096]
    except (TypeError, ValueError):
        return b'"(not kept: nested or numbered beyond what JSON text holds)"'


def _admit(state: DeviceState, topic: str, batch: DataBatch, flush: Flush) -> bool:
    """A batch from another outbox (``epoch``) than the device's current one is taken only if
    all its seqs are new; otherwise the device must renumber first (the ack tells it how far)."""
    if not state.epoch or batch.epoch == state.epoch:
        state.epoch = state.epoch or batch.epoch
        return True
    seqs = [r[0] for r in batch.records] + [b.seq for b in batch.bad] + [d.first for d in batch.dropped]
    if seqs and min(seqs) > state.max_seq:
        state.jump(state.max_seq)  # the old outbox is gone: what it never sent is lost
        state.epoch = batch.epoch
        flush.count("epoch_changes")
        return True
    flush.count("epoch_conflicts")
    flush.quarantined.append(
        Quarantined(
            topic,
            "epoch_conflict",
            f"outbox {batch.epoch!r} reuses seqs up to {state.max_seq} of outbox {state.epoch!r}",
            b"",
            0,
            state.device_id,
        )
    )
    return False


def _runs(seqs: list[int]) -> list[Range]:
    """``seqs`` as sorted, merged ranges (a batch is usually one contiguous run: checked in C)."""
    if not seqs:
        return []
    low, high = min(seqs), max(seqs)
    if high - low + 1 == len(seqs) == len(set(seqs)):
        return [(low, high)]
    runs: list[Range] = []
    for seq in sorted(seqs):
        if runs and seq <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], max(runs[-1][1], seq))
        else:
            runs.append((seq, seq))
    return runs


def settle(states: dict[str, DeviceState], flush: Flush, inserted: dict[str, int]) -> None:
    """Count what the store actually inserted; the rest of what was attempted were duplicates."""
    for device_id, attempted in flush.attempted.items():
        new = inserted.get(device_id, 0)
        states[device_id].records += new
        states[device_id].duplicates += attempted - new
        flush.count("records", new)
        flush.count("duplicates", attempted - new)

"""The cloud's acks: what the ingest has accounted for, and letting those records go.

The ingest's retained ack on ``<prefix>/<device>/ack`` names the highest seq it stored (or
quarantined, or saw announced as dropped) contiguously. Only then may a record leave the
outbox: a broker's PUBACK only means the broker took the message (docs/design/002-exactly-once.md).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.backoff import Backoff
from agent.counters import CounterSet, ThrottledLog
from agent.outbox import Outbox
from cloud_sync import protocol
from cloud_sync.mqtt import Client, Message
from cloud_sync.uploader.errors import LinkDead
from cloud_sync.uploader.reader import OutboxReader
from cloud_sync.uploader.status import SCOPE, SendRate
from cloud_sync.uploader.tracker import SendTracker

log = logging.getLogger(__name__)

Writer = Callable[..., Awaitable[Any]]
"""``await writer(fn, *args)`` runs ``fn`` on the thread that owns the outbox's writing connection."""
_PROBES_KEPT = 64
MAX_REBASE = 1 << 62
"""A new outbox renumbers its records above what the cloud has seen of an earlier one, but not
beyond this: an ack claiming seqs near 2^63 (forged, without an ACL) would exhaust them."""


class Acks:
    """Reads acks from the broker, moves the tracker, and releases acknowledged records."""

    def __init__(
        self,
        device_id: str,
        tracker: SendTracker,
        reader: OutboxReader,
        write: Writer,
        outbox: Outbox,
        counters: CounterSet,
        rate: SendRate,
        wake: Callable[[], None],
    ) -> None:
        self._device_id = device_id
        self._tracker = tracker
        self._reader = reader
        self._write = write
        self._outbox = outbox
        self._counters = counters
        self._rate = rate
        self._wake = wake
        self._errors = ThrottledLog(log, interval=30)
        self._changed = asyncio.Event()
        self._probes: dict[int, float] = {}
        self.epoch = ""
        self.target = 0
        """The highest seq acknowledged so far; records up to it may leave the outbox."""
        self.flushed = 0
        self.ever_acked = False
        self.acked_at: float | None = None
        self.echoed_at = 0.0
        """When the newest probe the ingest echoed was sent: later messages got through."""
        self.conflict: str | None = None
        """Set when the cloud acks another outbox under this device id."""

    async def load(self, epoch: str) -> None:
        """Start from the ack the outbox remembers."""
        self.epoch = epoch
        acked = await self._reader.call(self._reader.meta, "last_ack_seq")
        self.ever_acked = bool(acked)
        self._tracker.acked = self.target = self.flushed = int(acked or 0)
        self.acked_at = await self._reader.call(self._reader.meta, "last_ack_at")

    def probe_sent(self, probe: int, at: float) -> None:
        self._probes[probe] = at
        if len(self._probes) > _PROBES_KEPT:
            del self._probes[min(self._probes)]

    async def read(
        self, client: Client, ack_topic: str, first: asyncio.Event, other: Callable[[Message], None]
    ) -> None:
        """Every message of the connection: acks are taken here, the rest go to ``other``."""
        async for message in client.messages:
            first.set()
            if str(message.topic) != ack_topic:
                other(message)
                continue
            if not isinstance(message.payload, bytes | bytearray):
                continue
            try:
                ack = protocol.decode_ack(bytes(message.payload))
            except protocol.ProtocolError as exc:
                self._counters.incr(SCOPE, "bad_acks")
                self._errors.warning("bad-ack", "ignoring an ack: %s", exc)
                continue
            await self.take(ack)

    async def take(self, ack: protocol.Ack) -> None:
        if not ack.epoch:
            self._refuse("an ack that names no outbox (epoch)")
            return
        if ack.epoch != self.epoch:
            await self._foreign(ack)
            return
        tracker = self._tracker
        if ack.seq > tracker.highest_sent:
            # a forged or stale retained ack must not delete what the cloud never had; after a
            # restart the records are sent again and the ingest's next ack covers them
            self._refuse(f"an ack of seq {ack.seq}, beyond the highest sent ({tracker.highest_sent})")
            return
        if ack.probe in self._probes:
            self.echoed_at = max(self.echoed_at, self._probes[ack.probe])
        before = tracker.acked
        if tracker.on_ack(ack.seq, ack.max_seq, time.monotonic()):
            self._rate.acked(ack.seq - before)
            self.target = ack.seq
            self._changed.set()
            self._wake()

    def _refuse(self, what: str) -> None:
        self._counters.incr(SCOPE, "acks_refused")
        self._errors.warning("ack-refused", "refused %s: nothing is released", what)

    async def _foreign(self, ack: protocol.Ack) -> None:
        """An ack for another outbox of this device id: the cloud has seen seqs up to
        ``max_seq`` from it. A new outbox (never acked) moves its seqs above those; otherwise two
        gateways share one device id, which only the operator can fix."""
        if not self.ever_acked and ack.max_seq > MAX_REBASE:
            self._refuse(f"an ack of another outbox up to seq {ack.max_seq}: renumbering past it would "
                         "leave no seqs")
            return
        if not self.ever_acked and ack.max_seq > 0:
            offset = await self._write(self._outbox.rebase, ack.max_seq)
            if offset:
                log.warning(
                    "the cloud knows device %s up to seq %d from an earlier outbox; renumbered "
                    "this outbox's records by +%d",
                    self._device_id,
                    ack.max_seq,
                    offset,
                )
                self._counters.incr(SCOPE, "rebased")
                raise LinkDead("outbox renumbered; reconnecting to start over")
            return
        self._counters.incr(SCOPE, "epoch_conflicts")
        self.conflict = (
            f"the cloud acks another outbox ({ack.epoch}) for device {self._device_id}: "
            "is another gateway using the same device_id?"
        )
        self._errors.warning("epoch", "%s", self.conflict)

    async def release(self) -> None:
        """Let acknowledged records go, one outbox transaction per ack (latest wins); runs
        until cancelled. A write that fails (a full disk) is retried with backoff: the ack
        stays in memory meanwhile, and a later one covers it."""
        backoff = Backoff(first=0.5, cap=30.0)
        while True:
            await self._changed.wait()
            self._changed.clear()
            if await self.flush():
                backoff.reset()
            else:
                self._changed.set()
                await asyncio.sleep(backoff.next_delay())

    async def flush(self) -> bool:
        """Apply the newest ack to the outbox; False (counted, logged) if the write failed."""
        target = self.target
        if target <= self.flushed:
            return True
        try:
            await self._write(self._outbox.acknowledge, target)
        except (sqlite3.Error, OSError) as exc:
            self._counters.incr(SCOPE, "ack_write_errors")
            self._errors.warning(
                "ack-write", "cannot let records up to seq %d go (%s); retrying", target, exc
            )
            return False
        self.flushed = target
        self.ever_acked = True
        self.acked_at = time.time()
        return True

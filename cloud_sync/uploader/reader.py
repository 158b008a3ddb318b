"""The uploader's view of the outbox: a read-only connection on a thread of its own.

Reading and encoding happen there, so the uploader never waits on (or blocks) the writer that
commits what the modules emit, and never holds the backlog in memory: each message is read and
encoded from the outbox when it is about to be sent (a resend reads the records again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.config import CloudConfig
from agent.outbox import Outbox
from cloud_sync.protocol import DroppedRange, Encoder

T = TypeVar("T")


@dataclass
class Prepared:
    """One message ready to go: its payload and the seqs it carries."""

    payload: bytes
    first: int
    last: int
    count: int
    full: bool
    too_large: int | None = None
    probe: int = 0


class OutboxReader:
    """Reads and encodes outbox records for sending; every method but ``call``, ``open`` and
    ``close`` runs on the reader's thread (through ``call``)."""

    def __init__(self, config: CloudConfig, device_id: str, data_dir: Path) -> None:
        self._config = config
        self._device_id = device_id
        self._data_dir = data_dir
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-agent-sync")
        self._outbox: Outbox | None = None
        self._encoder: Encoder | None = None
        self._probe = 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the reader's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self, epoch: str) -> None:
        self._outbox = await self.call(Outbox.open_readonly, self._data_dir)
        self._encoder = Encoder(self._device_id, epoch, self._config.compression)

    def close(self) -> None:
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            self._executor.submit(outbox.close).result()
        self._executor.shutdown(wait=True)

    @property
    def _reader(self) -> Outbox:
        assert self._outbox is not None, "OutboxReader.open first"
        return self._outbox

    def meta(self, key: str) -> Any:
        return self._reader.meta(key)

    def last_seq(self) -> int:
        return self._reader.last_seq()

    def encode(
        self, after: int, up_to: int | None, acked: int, ripe: bool, limits: tuple[int, int]
    ) -> Prepared | None:
        """The next message after ``after`` (up to ``up_to``); ``limits`` is (the most a payload
        may hold, the batch bound). Its payload is empty while it is a partial batch that is not
        ``ripe`` yet, and ``too_large`` names a record that is over the limit even alone."""
        assert self._encoder is not None
        max_payload, batch_limit = limits
        config = self._config
        limit = config.batch_records
        rows = self._reader.read_rows(after, limit, config.batch_bytes, up_to)
        if not rows:
            return None
        full = len(rows) >= limit or sum(r[4] for r in rows) >= config.batch_bytes * 0.9
        if not (full or ripe):
            return Prepared(b"", rows[0][0], rows[-1][0], len(rows), False)
        dropped = self.dropped(acked)
        while True:
            payload = self._encoder.encode([r[:4] for r in rows], acked, dropped)
            if len(rows) == 1 and len(payload) > max_payload:
                return Prepared(b"", rows[0][0], rows[0][0], 0, True, too_large=rows[0][0])
            if len(rows) == 1 or len(payload) <= min(batch_limit, max_payload):
                return Prepared(payload, rows[0][0], rows[-1][0], len(rows), full)
            rows = rows[: len(rows) // 2]
            full = True

    def encode_dropped_only(self, acked: int) -> Prepared | None:
        """A message announcing the dropped ranges alone; None when there are none."""
        assert self._encoder is not None
        dropped = self.dropped(acked)
        if not dropped:
            return None
        return Prepared(self._encoder.encode([], acked, dropped), 0, 0, 0, True)

    def encode_probe(self, acked: int) -> Prepared:
        """An empty message the ingest echoes in its ack (numbered, to tell which got through)."""
        assert self._encoder is not None
        self._probe += 1
        payload = self._encoder.encode([], acked, self.dropped(acked), probe=self._probe)
        return Prepared(payload, 0, 0, 0, True, probe=self._probe)

    def dropped(self, acked: int) -> list[DroppedRange]:
        return [DroppedRange(*row) for row in self._reader.dropped_after(acked)]

    def backlog_figures(self) -> dict[str, Any]:
        """What the retained status says of the backlog (a scan: 0.2 s for 1,000,000 records)."""
        reader = self._reader
        backlog = reader.backlog()
        oldest = backlog["oldest_ts"]
        return {
            "backlog": {
                "rows": backlog["rows"],
                "bytes": backlog["bytes"],
                "oldest_unsent_age_s": None if oldest is None else round(max(0.0, time.time() - oldest), 1),
            },
            "dropped": reader.counters().get("dropped", {}),
            "last_seq": reader.last_seq(),
        }

"""Batches what the runtime accepts into outbox transactions, on the outbox's own thread.

Records, counters, quarantined inputs, module state and health gather in memory and are
committed together every ``commit_interval`` or ``commit_records``, whichever comes first: one
transaction per batch, never one per reading (an SD card would not last). A commit that fails
(disk full, I/O error) is retried with everything still in memory and in order; while the
pending records exceed their bound, producers wait, which stops the sources reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agent.api import Record
from agent.config import BufferConfig
from agent.counters import CounterSet, ThrottledLog
from agent.outbox.checkpoint import Checkpoint
from agent.outbox.records import Changes, Quarantined
from agent.outbox.store import Outbox

log = logging.getLogger(__name__)

T = TypeVar("T")
WAL_TRUNCATE_INTERVAL = 30.0
Snapshot = Callable[[Changes], None]


class Committer:
    def __init__(
        self,
        outbox: Outbox,
        config: BufferConfig,
        counters: CounterSet,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.outbox = outbox
        self.config = config
        self._counters = counters
        self._changes = Changes()
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-agent-outbox")
        self._wake = asyncio.Event()
        self._stopping = False
        self._room = asyncio.Event()
        self._room.set()
        self._max_pending = max(config.commit_records * 20, 100_000)
        self._snapshots: list[Snapshot] = []
        self._one_at_a_time = asyncio.Lock()
        self._errors = ThrottledLog(log, interval=30)
        self.last_commit_at: float | None = None
        self.last_error: str | None = None
        self._next_wal_truncate = time.monotonic() + WAL_TRUNCATE_INTERVAL
        self.failing_since: float | None = None
        """When commits started to fail (the first of a run of failures), else None."""
        self.disk_full = False

    @classmethod
    async def open(cls, data_dir: Path, config: BufferConfig, counters: CounterSet) -> Committer:
        """Open the outbox in ``data_dir`` on the thread that will do all its writing."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-agent-outbox")
        try:
            outbox = await asyncio.get_running_loop().run_in_executor(
                executor, functools.partial(
                    Outbox.open, data_dir, config.max_bytes, min_free=config.min_free
                ),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(outbox, config, counters, executor)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the outbox thread (every use of the connection goes there)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def on_commit(self, snapshot: Snapshot) -> None:
        """Call ``snapshot(changes)`` before every commit, to add state or health to it."""
        self._snapshots.append(snapshot)

    @property
    def pending(self) -> int:
        return len(self._changes.records)

    @property
    def full(self) -> bool:
        return self.pending >= self._max_pending

    def add(self, records: list[Record]) -> None:
        self._changes.records.extend(records)  # Record is (stream, ts, data): what the outbox takes
        if self.pending >= self.config.commit_records:
            self._wake.set()
        if self.full:
            self._room.clear()

    def quarantine(self, item: Quarantined) -> None:
        self._changes.quarantined.append(item)

    def reset_checkpoint(self, module: str) -> None:
        """The module's saved state is void from the next commit on (it stopped, or restarted
        afresh): what it saved is forgotten in the same transaction as what it emitted last."""
        if self._changes.checkpoint is None:
            self._changes.checkpoint = Checkpoint()
        self._changes.checkpoint.reset(module)

    async def wait_room(self) -> None:
        await self._room.wait()

    async def run(self) -> None:
        """Commit on every interval or wake-up until ``stop``."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):  # not wait_for: it can drop a cancel (3.11)
                async with asyncio.timeout(self.config.commit_interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.commit()

    async def commit(self) -> bool:
        """Commit everything gathered so far; False (and all kept for the next try) on failure.
        One at a time, acknowledgements included: whoever awaits a commit knows that every
        earlier one has been released too (a stop disconnects its sources right after)."""
        async with self._one_at_a_time:
            return await self._commit()

    async def _commit(self) -> bool:
        for snapshot in self._snapshots:
            snapshot(self._changes)
        changes, self._changes = self._changes, Changes()
        deltas = self._counters.take()
        changes.counters = _merged(changes.counters, deltas)
        if not changes:
            return True
        try:
            await self.call(self.outbox.commit, changes)
        except (sqlite3.Error, OSError) as exc:
            self._keep(changes)
            self.last_error = f"{self.outbox.path}: {exc}"
            self.failing_since = self.failing_since or time.time()
            self.disk_full = "full" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC
            self._counters.incr("outbox", "commit_errors")
            self._errors.warning(
                "commit", "cannot commit %d records to %s (%s); keeping them in memory and retrying",
                len(changes.records), self.outbox.path, exc,
            )
            return False
        self.last_commit_at = time.time()
        if self.failing_since is not None:
            log.warning("committing again after %.0f s of failures", self.last_commit_at - self.failing_since)
        self.last_error = None
        self.failing_since, self.disk_full = None, False
        if changes.checkpoint is not None:
            for release in changes.checkpoint.released:  # acknowledge what is now durable
                release()
        if time.monotonic() >= self._next_wal_truncate:
            self._next_wal_truncate = time.monotonic() + WAL_TRUNCATE_INTERVAL
            with contextlib.suppress(sqlite3.Error, OSError):  # a busy reader: next time
                await self.call(self.outbox.truncate_wal)
        if not self.full:
            self._room.set()
        return True

    def _keep(self, failed: Changes) -> None:
        later = self._changes
        failed.records.extend(later.records)
        failed.quarantined.extend(later.quarantined)
        failed.module_state.update(later.module_state)
        failed.health.update(later.health)
        if failed.checkpoint is None:
            failed.checkpoint = later.checkpoint
        elif later.checkpoint is not None:
            failed.checkpoint.merge(later.checkpoint)
        failed.counters = _merged(failed.counters, later.counters)
        self._changes = failed
        if self.full:
            self._room.clear()

    def stop(self) -> None:
        """End ``run`` after its current commit; ``close`` makes the final one."""
        self._stopping = True
        self._wake.set()

    async def close(self) -> None:
        """Final commit, then close the outbox and release its thread."""
        if not await self.commit():
            log.error(
                "shutting down with %d records that could not be committed: %s",
                self.pending, self.last_error,
            )
        await self.call(self.outbox.close)
        self._executor.shutdown(wait=True)


def _merged(a: dict[tuple[str, str], int], b: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    merged = dict(a)
    for key, by in b.items():
        merged[key] = merged.get(key, 0) + by
    return merged

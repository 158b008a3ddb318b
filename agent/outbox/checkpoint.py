"""The modules' side of a commit: their incremental state and the readings still queued for them.

Written in the same transaction as the outbox records and the counters, so that after a crash
the modules restart exactly where the committed records leave off, and the readings the broker
delivers again are exactly those whose effect was not committed (docs/design/004-checkpoints.md).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent import codec

log = logging.getLogger(__name__)

MIGRATION = [
    """CREATE TABLE checkpoint (
           module TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
           PRIMARY KEY (module, key)) WITHOUT ROWID""",
    """CREATE TABLE checkpoint_queue (
           module TEXT NOT NULL, pos INTEGER NOT NULL, topic TEXT NOT NULL, ts REAL NOT NULL,
           data TEXT NOT NULL, PRIMARY KEY (module, pos)) WITHOUT ROWID""",
]

QueuedRecord = tuple[str, float, dict[str, Any]]


@dataclass
class Checkpoint:
    """What one commit saves of the modules."""

    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per module, the keys that changed since the last checkpoint (``None`` forgets one)."""
    resets: set[str] = field(default_factory=set)
    """Modules whose saved state is void (stopped, replaced, restarted): forgotten first."""
    queued: dict[str, Sequence[QueuedRecord]] | None = None
    """Every module's queue as it was at the cut (replaces what was saved), or None."""
    released: list[Callable[[], None]] = field(default_factory=list)
    """Called once the commit is durable: the acknowledgements to the broker it covers."""

    def reset(self, module: str) -> None:
        self.modules.pop(module, None)
        self.resets.add(module)

    def add(self, module: str, items: dict[str, Any]) -> None:
        if items:
            self.modules.setdefault(module, {}).update(items)

    def merge(self, later: Checkpoint) -> None:
        """Take ``later`` (taken after this one) on top of this one."""
        for module in later.resets:
            self.reset(module)
        for module, items in later.modules.items():
            self.add(module, items)
        if later.queued is not None:
            self.queued = later.queued
        self.released += later.released


def write(conn: sqlite3.Connection, checkpoint: Checkpoint) -> None:
    """Inside the commit's transaction."""
    conn.executemany("DELETE FROM checkpoint WHERE module = ?", [(m,) for m in checkpoint.resets])
    for module, items in checkpoint.modules.items():
        gone = [(module, key) for key, value in items.items() if value is None]
        kept = [(module, key, codec.dumps(value)) for key, value in items.items() if value is not None]
        conn.executemany("DELETE FROM checkpoint WHERE module = ? AND key = ?", gone)
        conn.executemany("INSERT OR REPLACE INTO checkpoint VALUES (?, ?, ?)", kept)
    if checkpoint.queued is not None:
        conn.execute("DELETE FROM checkpoint_queue")
        conn.executemany(
            "INSERT INTO checkpoint_queue VALUES (?, ?, ?, ?, ?)",
            [
                (module, pos, topic, ts, codec.dumps(data))
                for module, records in checkpoint.queued.items()
                for pos, (topic, ts, data) in enumerate(records)
            ],
        )


def read(conn: sqlite3.Connection) -> tuple[dict[str, dict[str, Any]], dict[str, list[QueuedRecord]]]:
    """Every module's saved state, and the readings that were queued for it."""
    modules: dict[str, dict[str, Any]] = {}
    for module, key, value in conn.execute("SELECT module, key, value FROM checkpoint"):
        modules.setdefault(module, {})[key] = codec.loads(value)
    queued: dict[str, list[QueuedRecord]] = {}
    rows = conn.execute("SELECT module, topic, ts, data FROM checkpoint_queue ORDER BY module, pos")
    for module, topic, ts, data in rows:
        queued.setdefault(module, []).append((topic, ts, codec.loads(data)))
    return modules, queued

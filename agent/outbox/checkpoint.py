"""The modules' side of a commit: their incremental state and the readings still queued for them.

Written in the same transaction as the outbox records and the counters, so that after a crash
the modules restart exactly where the committed records leave off, and the readings the broker
delivers again are exactly those whose effect was not committed (docs/design/004-checkpoints.md).

A commit appends the keys that changed to ``checkpoint_log`` instead of updating them in place:
with 100,000 open windows, the 2,500 sensors one commit touches lie on nearly as many pages of a
keyed table, and rewriting those pages cost 70 ms per commit on an idle machine, 374 ms on a
loaded one: more than the commit interval (docs/benchmarks.md).
Appends fill a few pages at the end of the log; now and then the log is folded into
``checkpoint`` in one sorted pass, once it holds a quarter as many rows (at least ``FOLD_MIN``).
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

# Another schema step (the outbox's migrations are numbered by position).
LOG_MIGRATION = [
    # value NULL: the key was forgotten. Read in rowid order, later rows win.
    "CREATE TABLE checkpoint_log (module TEXT NOT NULL, key TEXT NOT NULL, value TEXT)",
]

FOLD_MIN = 10_000
FOLD_SHARE = 4
"""The log is folded once it holds ``FOLD_MIN`` rows, or 1/``FOLD_SHARE`` of the folded table's if
more: a fold rewrites most of the table's pages whatever it carries, so rarer folds cost less in
all, and each takes longer."""

_LATEST = "SELECT max(rowid) FROM checkpoint_log GROUP BY module, key"

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
    for table in ("checkpoint", "checkpoint_log"):
        conn.executemany(f"DELETE FROM {table} WHERE module = ?", [(m,) for m in checkpoint.resets])
    conn.executemany(
        "INSERT INTO checkpoint_log VALUES (?, ?, ?)",
        [
            (module, key, None if value is None else codec.dumps(value))
            for module, items in checkpoint.modules.items()
            for key, value in items.items()
        ],
    )
    if (logged := _log_rows(conn)) >= FOLD_MIN and logged * FOLD_SHARE >= _folded_rows(conn):
        fold(conn)
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


def fold(conn: sqlite3.Connection) -> None:
    """Move the log's latest value of each key into ``checkpoint`` (inside a transaction)."""
    conn.execute(
        "DELETE FROM checkpoint WHERE (module, key) IN "
        f"(SELECT module, key FROM checkpoint_log WHERE value IS NULL AND rowid IN ({_LATEST}))"
    )
    conn.execute(
        "INSERT OR REPLACE INTO checkpoint SELECT module, key, value FROM checkpoint_log "
        f"WHERE value IS NOT NULL AND rowid IN ({_LATEST}) ORDER BY module, key"
    )
    conn.execute("DELETE FROM checkpoint_log")
    # Counted here, once per fold, rather than at every commit (a scan of the whole table).
    conn.execute(
        "INSERT OR REPLACE INTO meta VALUES ('checkpoint_rows', (SELECT count(*) FROM checkpoint))"
    )


def _log_rows(conn: sqlite3.Connection) -> int:
    # Rows are only appended, or deleted all at once per module: the rowid span bounds the count
    # without a scan.
    span: int | None = conn.execute("SELECT max(rowid) - min(rowid) + 1 FROM checkpoint_log").fetchone()[0]
    return span or 0


def _folded_rows(conn: sqlite3.Connection) -> int:
    """As of the last fold (a reset since may have made it smaller: then the next fold is late)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'checkpoint_rows'").fetchone()
    return int(row[0]) if row else 0


def read(conn: sqlite3.Connection) -> tuple[dict[str, dict[str, Any]], dict[str, list[QueuedRecord]]]:
    """Every module's saved state, and the readings that were queued for it."""
    modules: dict[str, dict[str, Any]] = {}
    for module, key, value in conn.execute("SELECT module, key, value FROM checkpoint"):
        modules.setdefault(module, {})[key] = codec.loads(value)
    latest = conn.execute(f"SELECT module, key, value FROM checkpoint_log WHERE rowid IN ({_LATEST})")
    for module, key, value in latest:
        if value is not None:
            modules.setdefault(module, {})[key] = codec.loads(value)
        elif key in modules.get(module, {}):
            del modules[module][key]
            if not modules[module]:
                del modules[module]
    queued: dict[str, list[QueuedRecord]] = {}
    rows = conn.execute("SELECT module, topic, ts, data FROM checkpoint_queue ORDER BY module, pos")
    for module, topic, ts, data in rows:
        queued.setdefault(module, []).append((topic, ts, codec.loads(data)))
    return modules, queued

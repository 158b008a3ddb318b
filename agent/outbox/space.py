"""How much disk the outbox takes, and how much its file system has left.

The byte budget (``buffer.max_bytes``) bounds what the outbox takes on disk: the database's pages
in use (free pages inside the file are reused before the file grows, so they do not count) plus
its WAL file, which holds a copy of every page written since the last checkpoint.

The margin (``buffer.min_free``) keeps that much of the file system free. Below it, a commit takes
new records only into room that needs no new disk space (the database's free pages, and whatever
is left above the margin); the rest are refused and counted. What must still be written while the
disk is low (counters, health, module checkpoints, the deletes of records the cloud acknowledged,
which need WAL space too) then has room, and nothing waits on a file system that is already full.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)


def footprint(conn: sqlite3.Connection, wal: Path) -> int:
    """Bytes on disk that the byte budget counts: pages in use, plus the WAL file."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    try:
        wal_bytes = wal.stat().st_size
    except FileNotFoundError:
        wal_bytes = 0
    return int((pages - free) * page_size + wal_bytes)


WAL_SHARE = 8
"""The WAL is kept to about this fraction of the byte budget (and to SQLite's usual 4 MiB)."""


def size_wal(conn: sqlite3.Connection, max_bytes: int) -> None:
    """Checkpoint the WAL once it holds an eighth of the budget (SQLite's default is 1,000
    pages, 4 MiB: all of a small budget), and cut it back to that size after each checkpoint.
    The budget counts the WAL, so it must not take the budget's room from the records."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    limit = min(4 << 20, max_bytes // WAL_SHARE)
    conn.execute(f"PRAGMA wal_autocheckpoint={max(16, min(1000, limit // page_size))}")
    conn.execute(f"PRAGMA journal_size_limit={max(limit, 16 * page_size)}")


def reusable(conn: sqlite3.Connection) -> int:
    """Bytes of free pages inside the database: new rows fill them before the file grows."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0] * page_size)


def free_bytes(folder: Path) -> int:
    """What an unprivileged writer may still use on ``folder``'s file system."""
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize


HYSTERESIS = 8
"""Low space ends once free space is an eighth of the margin above it: refusing a commit's
records leaves the file system at the margin exactly, and status should not flicker there."""


class Margin:
    """``buffer.min_free`` on the data directory's file system: how many new bytes a commit may
    add, and since when the file system has been below the margin."""

    def __init__(self, folder: Path, min_free: int) -> None:
        self.folder = folder
        self.min_free = min_free
        self.low_since: float | None = None
        """When free space fell below ``min_free`` (None while there is enough)."""
        self.free = 0
        """Free bytes at the last look."""

    def room(self, conn: sqlite3.Connection, adding: int) -> int | None:
        """Bytes of new records a commit may take now (None: all of them)."""
        if not self.min_free:
            return None
        try:
            self.free = free_bytes(self.folder)
        except OSError as exc:  # cannot tell: do not refuse on a guess
            log.debug("cannot read the free space of %s: %s", self.folder, exc)
            return None
        if self.low_since is not None and self.free >= self.min_free + self.min_free // HYSTERESIS:
            log.warning("%s has %d MB free again (buffer.min_free %d MB): taking new records",
                        self.folder, self.free // 1_000_000, self.min_free // 1_000_000)
            self.low_since = None
        if self.free - adding >= self.min_free:
            return None
        if self.low_since is None:
            self.low_since = time.time()
            log.warning(
                "%s has %d MB free, below buffer.min_free (%d MB): new records are refused and "
                "counted as dropped.disk_low until space returns", self.folder,
                self.free // 1_000_000, self.min_free // 1_000_000,
            )
        return reusable(conn) + max(0, self.free - self.min_free)

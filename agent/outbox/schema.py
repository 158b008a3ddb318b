"""The outbox file's schema, its migrations, and how connections to it are opened.

Every write to the outbox goes through ``transaction``: ``BEGIN IMMEDIATE`` (the write lock up
front, so a reader never upgrades into a deadlock), ``COMMIT`` at the end, and ``ROLLBACK`` on any
error, so a failed write (a full disk) leaves nothing half-done.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.errors import OutboxError
from agent.outbox import checkpoint as checkpoint_migration

DB_NAME = "outbox.db"

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE outbox (
               seq INTEGER PRIMARY KEY AUTOINCREMENT,
               stream TEXT NOT NULL,
               ts REAL NOT NULL,
               data TEXT NOT NULL,
               size INTEGER NOT NULL)""",
        """CREATE TABLE counters (
               scope TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
               PRIMARY KEY (scope, name)) WITHOUT ROWID""",
        """CREATE TABLE dropped_ranges (
               first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
               reason TEXT NOT NULL, at REAL NOT NULL)""",
        """CREATE TABLE quarantine (
               id INTEGER PRIMARY KEY AUTOINCREMENT, module TEXT NOT NULL, topic TEXT NOT NULL,
               ts REAL NOT NULL, data TEXT NOT NULL, error TEXT NOT NULL, at REAL NOT NULL)""",
        "CREATE TABLE module_state (module TEXT PRIMARY KEY, state TEXT NOT NULL)",
        "CREATE TABLE health (name TEXT PRIMARY KEY, data TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    [
        # Records the uploader could not deliver (too large for the broker, refused by it):
        # kept here with the reason, and announced to the cloud as a dropped range.
        """CREATE TABLE sync_set_aside (
               seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, ts REAL NOT NULL,
               data TEXT NOT NULL, size INTEGER NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)""",
        "CREATE INDEX dropped_ranges_last ON dropped_ranges (last_seq)",
    ],
    checkpoint_migration.MIGRATION,
    checkpoint_migration.LOG_MIGRATION,
]


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def connect_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    """The file's writing connection (WAL, so readers never wait), migrated to this schema."""
    _private_dir(path.parent)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    path.chmod(0o600)  # unsent data: the agent user's alone, whoever created the file
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    # After each checkpoint the WAL file shrinks back to this, so it cannot hold on to the
    # space of a burst (a 10 GB WAL has filled disks elsewhere).
    conn.execute("PRAGMA journal_size_limit=4194304")
    migrate(conn)
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection; ``OutboxError`` if the file is missing or from a newer agent."""
    if not path.exists():
        raise OutboxError(str(path), "no outbox yet: the agent has not run with this data_dir")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise OutboxError(str(path), f"cannot read the outbox: {exc}") from exc
    if version > len(MIGRATIONS):
        conn.close()
        raise OutboxError(str(path), f"written by a newer agent (schema {version})")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to date, one numbered step at a time, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise OutboxError("", f"the outbox was written by a newer agent (schema {version})")
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(conn):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")


def _private_dir(folder: Path) -> None:
    """Create the data directory mode 700; one of ours that others may read is closed."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        folder.chmod(0o700)

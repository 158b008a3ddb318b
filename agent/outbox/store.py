"""The SQLite outbox: the durability boundary between processing and sync.

One ``Outbox`` owns the file's only writing connection and is used from one thread (the
committer's). A record is accepted once ``commit`` returns: from then on it survives crashes and
keeps its ``seq``, which only grows (AUTOINCREMENT never hands out a number twice, even after the
rows before it were sent and deleted). The uploader reads the oldest unsent rows with
``read_rows`` and lets records go with ``acknowledge`` once the cloud's ack covers them; anything
not acknowledged stays for the next try.

Other processes (``edge-agent status``) read the same file through ``Outbox.open_readonly``;
WAL mode lets them read while the daemon writes.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agent import codec
from agent.errors import OutboxError
from agent.outbox import checkpoint as checkpoints
from agent.outbox import space
from agent.outbox.records import Changes, OutboxRecord, Quarantined
from agent.outbox.schema import DB_NAME, connect_reader, connect_writer, transaction

log = logging.getLogger(__name__)

_MAX_SEQ = (1 << 63) - 1


class Outbox:
    """The outbox file. Not thread-safe: use it from one thread."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, max_bytes: int | None, writer: bool = True,
        min_free: int = 0,
    ) -> None:
        self._conn = conn
        self.path = path
        self.max_bytes = max_bytes
        self.margin = space.Margin(path.parent, min_free)
        """``buffer.min_free``: below it, new records are refused (counted as ``disk_low``)."""
        self._wal = path.with_name(path.name + "-wal")
        if writer and max_bytes is not None:
            space.size_wal(conn, max_bytes)
        # The byte budget is the writer's alone: a reader (the uploader, ``status``) does not
        # scan the whole table for it (80 ms for a backlog of 1,000,000 records).
        self._bytes = self._scalar("SELECT coalesce(sum(size), 0) FROM outbox") if writer else 0

    @classmethod
    def open(
        cls, data_dir: Path, max_bytes: int | None = None, synchronous: str = "NORMAL", min_free: int = 0
    ) -> Outbox:
        """Open (creating and migrating) the outbox in ``data_dir`` for writing."""
        path = Path(data_dir) / DB_NAME
        try:
            conn = connect_writer(path, synchronous)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(str(path), f"cannot open the outbox: {exc}") from exc
        return cls(conn, path, max_bytes, min_free=min_free)

    @classmethod
    def open_readonly(cls, data_dir: Path) -> Outbox:
        """Open an existing outbox for reading only; raise ``OutboxError`` if there is none."""
        return cls(connect_reader(Path(data_dir) / DB_NAME), Path(data_dir) / DB_NAME, None, writer=False)

    def close(self) -> None:
        self._conn.close()

    # -- writing -------------------------------------------------------------------------------

    def commit(self, changes: Changes) -> None:
        """Write ``changes`` in one transaction; on error nothing of it is written.

        A record whose data JSON cannot represent (a module emitted a datetime, a set, a
        numpy scalar) is not lost and does not fail the others: it goes to the quarantine with
        the reason, and counts as ``dropped.not_serialisable``. While the file system is below
        ``min_free``, the newest records that would need new disk space are refused and counted
        as ``dropped.disk_low``; the rest of the commit is written."""
        conn = self._conn
        now = time.time()
        rows: list[_Row] = []
        added_bytes = unserialisable = 0
        quarantined = list(changes.quarantined)
        for stream, ts, data in changes.records:
            try:
                text = codec.dumps(data)
            except (TypeError, ValueError) as exc:
                quarantined.append(Quarantined(stream, stream, ts, data, f"not serialisable: {exc}"))
                unserialisable += 1  # counted in the transaction: a failed commit is tried again
                continue
            size = len(stream) + len(text) + 16
            rows.append((stream, ts, text, size))
            added_bytes += size
        refused = 0
        room = self.margin.room(conn, added_bytes)
        if room is not None:
            rows, refused, added_bytes = _within(rows, room)
        states = []
        for name, state in changes.module_state.items():
            try:
                states.append((name, codec.dumps(state)))
            except (TypeError, ValueError) as exc:
                log.error("module %r: its state cannot be saved, JSON cannot hold it: %s", name, exc)
        with transaction(conn):
            conn.executemany(
                "INSERT INTO outbox (stream, ts, data, size) VALUES (?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "INSERT INTO counters VALUES (?, ?, ?) "
                "ON CONFLICT (scope, name) DO UPDATE SET value = value + excluded.value",
                [(scope, name, by) for (scope, name), by in changes.counters.items()],
            )
            conn.executemany(
                "INSERT INTO quarantine (module, topic, ts, data, error, at) VALUES (?, ?, ?, ?, ?, ?)",
                [(q.module, q.topic, q.ts, _json_or_repr(q.data), q.error, now) for q in quarantined],
            )
            conn.executemany("INSERT OR REPLACE INTO module_state VALUES (?, ?)", states)
            conn.executemany(
                "INSERT OR REPLACE INTO health VALUES (?, ?, ?)",
                [(name, codec.dumps(data), now) for name, data in changes.health.items()],
            )
            if changes.checkpoint is not None:
                checkpoints.write(conn, changes.checkpoint)
            if refused:
                self._count_dropped("disk_low", refused)
            if unserialisable:
                self._count_dropped("not_serialisable", unserialisable)
            overflow = self._enforce_budget(now)
        self._bytes += added_bytes - overflow

    def footprint(self) -> int:
        """What the byte budget counts: the database's pages in use plus its WAL file."""
        return space.footprint(self._conn, self._wal)

    def _enforce_budget(self, now: float) -> int:
        """Drop the oldest unsent rows while the outbox takes more than ``max_bytes`` on disk;
        return the bytes of the rows dropped. A row's page space is at least its size, so
        dropping rows of ``excess`` bytes frees at least that much for the next records."""
        if self.max_bytes is None:
            return 0
        excess = self.footprint() - self.max_bytes
        if excess <= 0:
            return 0
        freed = count = 0
        first_seq = last_seq = None
        for seq, size in self._conn.execute("SELECT seq, size FROM outbox ORDER BY seq"):
            if freed >= excess:
                break
            freed += size
            count += 1
            first_seq = first_seq or seq
            last_seq = seq
        if last_seq is None:
            return 0
        self._conn.execute("DELETE FROM outbox WHERE seq <= ?", (last_seq,))
        self._conn.execute(
            "INSERT INTO dropped_ranges VALUES (?, ?, 'buffer_full', ?)", (first_seq, last_seq, now)
        )
        self._count_dropped("buffer_full", count)
        return freed

    def _count_dropped(self, reason: str, count: int) -> None:
        self._conn.execute(
            "INSERT INTO counters VALUES ('dropped', ?, ?) "
            "ON CONFLICT (scope, name) DO UPDATE SET value = value + excluded.value",
            (reason, count),
        )

    def acknowledge(self, up_to_seq: int) -> int:
        """Remove every record with ``seq <= up_to_seq`` and remember the ack."""
        conn = self._conn
        with transaction(conn):
            freed, removed = conn.execute(
                "SELECT coalesce(sum(size), 0), count(*) FROM outbox WHERE seq <= ?", (up_to_seq,)
            ).fetchone()
            conn.execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,))
            previous = self.meta("last_ack_seq", 0)
            if up_to_seq > previous:
                self._set_meta("last_ack_seq", up_to_seq)
                self._set_meta("last_ack_at", time.time())
        self._bytes -= freed
        return int(removed)

    # -- sync (the uploader's side) -------------------------------------------------------------

    def epoch(self) -> str:
        """This outbox's identity: a random id made once, with the file. The cloud tells a new
        outbox of a device (a wiped SD card) from the old one by it."""
        epoch = self.meta("epoch")
        if epoch is None:
            epoch = secrets.token_hex(8)
            with transaction(self._conn):
                self._set_meta("epoch", epoch)
        return str(epoch)

    def read_rows(
        self, after_seq: int, max_records: int, max_bytes: int, up_to_seq: int | None = None
    ) -> list[tuple[int, str, float, str, int]]:
        """Unsent rows after ``after_seq`` (and up to ``up_to_seq``) as stored, ``data`` still
        JSON text: ``(seq, stream, ts, data, size)``, bounded by count and bytes (at least one)."""
        rows = self._conn.execute(
            "SELECT seq, stream, ts, data, size FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (after_seq, _MAX_SEQ if up_to_seq is None else up_to_seq, max_records),
        ).fetchall()
        total = 0
        for index, row in enumerate(rows):
            total += row[4]
            if index and total > max_bytes:
                return rows[:index]
        return rows

    def dropped_after(self, seq: int, limit: int = 100) -> list[tuple[int, int, str]]:
        """Dropped ranges ``(first_seq, last_seq, reason)`` not yet covered by an ack at ``seq``."""
        return self._conn.execute(
            "SELECT first_seq, last_seq, reason FROM dropped_ranges WHERE last_seq > ? "
            "ORDER BY first_seq LIMIT ?",
            (seq, limit),
        ).fetchall()

    def set_aside(self, seq: int, reason: str, detail: str = "") -> bool:
        """Move one unsendable record out of the queue, keep it with ``reason`` and ``detail``,
        count it under ``dropped/<reason>`` and record its seq as a dropped range (which the
        uploader announces). False if the record is not in the outbox any more."""
        conn = self._conn
        now = time.time()
        with transaction(conn):
            row = conn.execute("SELECT stream, ts, data, size FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO sync_set_aside VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, *row, f"{reason}: {detail}" if detail else reason, now),
            )
            conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            conn.execute("INSERT INTO dropped_ranges VALUES (?, ?, ?, ?)", (seq, seq, reason, now))
            conn.execute(
                "INSERT INTO counters VALUES ('dropped', ?, 1) "
                "ON CONFLICT (scope, name) DO UPDATE SET value = value + 1",
                (reason,),
            )
        self._bytes -= row[3]
        return True

    def set_aside_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT seq, stream, reason, size, at FROM sync_set_aside ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [dict(zip(("seq", "stream", "reason", "size", "at"), row, strict=True)) for row in rows]

    def rebase(self, above_seq: int) -> int:
        """Renumber every unsent record (and dropped range) so that the first comes after
        ``above_seq``; the cloud has seen seqs up to there from an earlier outbox of this device.
        Returns the offset added (0 if nothing needed it)."""
        conn = self._conn
        with transaction(conn):
            lowest = (
                conn.execute(
                    "SELECT min(s) FROM (SELECT min(seq) AS s FROM outbox "
                    "UNION ALL SELECT min(first_seq) FROM dropped_ranges "
                    "UNION ALL SELECT seq + 1 FROM sqlite_sequence WHERE name = 'outbox')"
                ).fetchone()[0]
                or 1
            )
            offset = max(0, above_seq + 1 - lowest)
            if offset:
                # Shift from the top down so no seq collides on the way.
                conn.execute("UPDATE outbox SET seq = -(seq + ?)", (offset,))
                conn.execute("UPDATE outbox SET seq = -seq")
                conn.execute(
                    "UPDATE dropped_ranges SET first_seq = first_seq + ?, last_seq = last_seq + ?",
                    (offset, offset),
                )
                conn.execute("UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'outbox'", (offset,))
                conn.execute(
                    "INSERT OR IGNORE INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (above_seq,)
                )
                self._set_meta("rebased", {"offset": offset, "at": time.time()})
        return offset

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, codec.dumps(value)))

    # -- reading -------------------------------------------------------------------------------

    def meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return codec.loads(row[0]) if row else default

    def unsent(self, limit: int | None = None) -> Iterator[OutboxRecord]:
        cursor = self._conn.execute(
            "SELECT seq, stream, ts, data FROM outbox ORDER BY seq LIMIT ?",
            (-1 if limit is None else limit,),
        )
        for seq, stream, ts, data in cursor:
            yield OutboxRecord(seq, stream, ts, codec.loads(data))

    def backlog(self) -> dict[str, Any]:
        rows, size, oldest_ts, first_seq, last_seq = self._conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(ts), min(seq), max(seq) FROM outbox"
        ).fetchone()
        return {
            "rows": rows,
            "bytes": size,
            "oldest_ts": oldest_ts,
            "first_seq": first_seq,
            "last_seq": last_seq,
        }

    def last_seq(self) -> int:
        """The highest ``seq`` ever handed out (0 before the first record)."""
        return self._scalar("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'")

    def counters(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        for scope, name, value in self._conn.execute("SELECT scope, name, value FROM counters"):
            result.setdefault(scope, {})[name] = value
        return result

    def truncate_wal(self) -> None:
        """Copy the WAL into the database and empty it (the committer does so now and then, so
        the WAL cannot grow on its own while readers keep SQLite's own checkpoints short)."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def checkpoint(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[checkpoints.QueuedRecord]]]:
        """The modules' last committed checkpoint: their saved keys, their queued readings."""
        return checkpoints.read(self._conn)

    def module_states(self) -> dict[str, dict[str, Any]]:
        rows = self._conn.execute("SELECT module, state FROM module_state")
        return {module: codec.loads(state) for module, state in rows}

    def health(self) -> dict[str, tuple[dict[str, Any], float]]:
        rows = self._conn.execute("SELECT name, data, at FROM health")
        return {name: (codec.loads(data), at) for name, data, at in rows}

    def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT id, module, topic, ts, data, error, at FROM quarantine ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            {
                "id": id_,
                "module": module,
                "topic": topic,
                "ts": ts,
                "data": codec.loads(data),
                "error": error,
                "at": at,
            }
            for id_, module, topic, ts, data, error, at in rows
        ]

    def quarantine_count(self) -> int:
        return self._scalar("SELECT count(*) FROM quarantine")

    def integrity_check(self) -> str:
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._conn.execute(sql, params).fetchone()[0])


_Row = tuple[str, float, str, int]  # stream, ts, data as JSON, size


def _within(rows: list[_Row], room: int) -> tuple[list[_Row], int, int]:
    """The oldest rows that fit in ``room`` bytes: those rows, how many are left out, and the
    bytes of those kept."""
    used = 0
    for index, row in enumerate(rows):
        if used + row[3] > room:
            return rows[:index], len(rows) - index, used
        used += row[3]
    return rows, 0, used


def _json_or_repr(data: Any) -> str:
    """JSON for the quarantine, which must take whatever broke a module: ``repr`` if need be."""
    try:
        return codec.dumps(data)
    except (TypeError, ValueError):
        return codec.dumps({"repr": repr(data)[:4096]})

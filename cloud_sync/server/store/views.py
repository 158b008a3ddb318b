"""The console's read side of the store: the fleet's summary rows and each device's history.

Both engines share this code. Two tables are written in the ingest's own transaction, after
the device states (so they never disagree with them):

* ``device_summary``: one flat row per device (see ``summary.py``), indexed for the orders and
  filters of the fleet page, plus ``quarantined``, counted as messages are kept aside.
* ``status_history``: each device's figures over time, at most one row per device per
  ``history_step`` seconds (the last status in that step wins), kept ``history_keep`` seconds.

The reads answer the console's questions with indexed queries: a sorted, filtered page of the
fleet and its totals; a device's history, streams, latest records, dropped ranges. SQL is
written once with ``?`` placeholders; an engine sets ``_MARK`` to its own.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

from agent import codec
from cloud_sync.server.ledger import DeviceState, Flush, Incoming, Status
from cloud_sync.server.store.fleet_query import FleetQuery
from cloud_sync.server.store.summary import LIVE_COLUMNS, SUMMARY_COLUMNS, static_api, summarize

STATIC_KEYS = frozenset(static_api({c: None for c in SUMMARY_COLUMNS} | {"dropped": None}))
"""The keys of a current ``doc``; a store whose docs differ has them written again at open."""

HISTORY_COLUMNS = (
    "device_id", "bucket", "at", "online", "backlog", "backlog_bytes", "oldest_unsent_age_s",
    "send_rate", "dropped_total", "errors_total",
)

_DDL = (
    """CREATE TABLE IF NOT EXISTS device_summary (
        device_id TEXT PRIMARY KEY, online INTEGER, first_seen DOUBLE PRECISION,
        last_seen DOUBLE PRECISION, last_sync DOUBLE PRECISION, status_at DOUBLE PRECISION,
        backlog BIGINT, backlog_bytes BIGINT, oldest_unsent_age_s DOUBLE PRECISION,
        oldest_unsent_at DOUBLE PRECISION, send_rate DOUBLE PRECISION, records BIGINT,
        duplicates BIGINT, gaps BIGINT, lost BIGINT, bad_records BIGINT, acked_seq BIGINT,
        max_seq BIGINT, dropped_total BIGINT, dropped TEXT, dropped_announced TEXT,
        errors_total BIGINT, errors TEXT, last_error TEXT, version TEXT, config_version TEXT,
        clock_synced INTEGER, clock_time DOUBLE PRECISION, updated_at DOUBLE PRECISION NOT NULL,
        doc TEXT NOT NULL, quarantined BIGINT NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS device_summary_problems ON device_summary (online, oldest_unsent_at)",
    "CREATE INDEX IF NOT EXISTS device_summary_lag ON device_summary (oldest_unsent_at)",
    "CREATE INDEX IF NOT EXISTS device_summary_seen ON device_summary (last_seen)",
    "CREATE INDEX IF NOT EXISTS device_summary_backlog ON device_summary (backlog)",
    "CREATE INDEX IF NOT EXISTS device_summary_updated ON device_summary (updated_at)",
    """CREATE TABLE IF NOT EXISTS status_history (
        device_id TEXT NOT NULL, bucket BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
        online INTEGER, backlog BIGINT, backlog_bytes BIGINT, oldest_unsent_age_s DOUBLE PRECISION,
        send_rate DOUBLE PRECISION, dropped_total BIGINT, errors_total BIGINT,
        PRIMARY KEY (device_id, bucket))""",
    "CREATE INDEX IF NOT EXISTS status_history_at ON status_history (at)",
    "CREATE INDEX IF NOT EXISTS dropped_at ON dropped (device_id, at)",
)

_INSERT_SUMMARY = (
    f"INSERT INTO device_summary ({', '.join(SUMMARY_COLUMNS)}, quarantined) "
    f"VALUES ({', '.join('?' * len(SUMMARY_COLUMNS))}, ?) ON CONFLICT (device_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SUMMARY_COLUMNS if c != "device_id")
)
_UPSERT_SUMMARY = _INSERT_SUMMARY + ", quarantined = device_summary.quarantined + excluded.quarantined"
"""Adds this flush's quarantined messages to the device's count."""
_BACKFILL_SUMMARY = _INSERT_SUMMARY + ", quarantined = excluded.quarantined"
_UPSERT_HISTORY = (
    f"INSERT INTO status_history ({', '.join(HISTORY_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(HISTORY_COLUMNS))}) ON CONFLICT (device_id, bucket) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in HISTORY_COLUMNS[2:])
)
_FLEET_TOTALS = """
SELECT count(*) AS devices,
    coalesce(sum(CASE WHEN online = 1 AND last_seen >= ? THEN 1 ELSE 0 END), 0) AS online,
    coalesce(sum(CASE WHEN online = 0 THEN 1 ELSE 0 END), 0) AS offline,
    coalesce(sum(CASE WHEN online = 1 AND last_seen < ? THEN 1 ELSE 0 END), 0) AS silent,
    coalesce(sum(CASE WHEN online IS NULL THEN 1 ELSE 0 END), 0) AS unknown,
    coalesce(sum(CASE WHEN backlog > 0 AND oldest_unsent_at < ? THEN 1 ELSE 0 END), 0) AS behind,
    coalesce(sum(CAST(backlog AS DOUBLE PRECISION)), 0) AS backlog,
    coalesce(sum(CAST(backlog_bytes AS DOUBLE PRECISION)), 0) AS backlog_bytes,
    coalesce(sum(CAST(dropped_total AS DOUBLE PRECISION)), 0) AS dropped,
    coalesce(sum(CAST(quarantined AS DOUBLE PRECISION)), 0) AS quarantined,
    coalesce(sum(CAST(errors_total AS DOUBLE PRECISION)), 0) AS errors,
    coalesce(sum(send_rate), 0) AS send_rate
FROM device_summary"""
# The sums are taken as floats: an integer sum overflows (SQLite raises) where a fleet's figures
# add up past 2^63, and each figure is bounded at ingest (summary.FIGURE_MAX) anyway.
_WORST_LAG = """
SELECT device_id, oldest_unsent_age_s, status_at, backlog FROM device_summary
WHERE oldest_unsent_at IS NOT NULL ORDER BY oldest_unsent_at LIMIT 1"""
# The distinct streams of one device by hopping along the (device_id, stream, seq) index: one
# index probe per stream, however many records there are.
_STREAMS = """
WITH RECURSIVE s(stream) AS (
    SELECT min(stream) FROM records WHERE device_id = ?
    UNION ALL
    SELECT (SELECT min(stream) FROM records WHERE device_id = ? AND stream > s.stream)
    FROM s WHERE s.stream IS NOT NULL
)
SELECT stream FROM s WHERE stream IS NOT NULL LIMIT ?"""


class ConsoleViews:
    """Mixed into ``Store``: see the module docstring. Engines provide ``_query`` (a read on
    the calling thread's own connection), ``_conn`` (the writer) and ``_MARK``."""

    _MARK = "?"
    _conn: Any
    history_step: float = 60.0
    """Seconds per point of a device's status history (at most one row per step)."""
    history_keep: float = 2 * 86400.0
    """Seconds of status history kept."""
    history_prune_every: float = 600.0
    """Seconds between two deletions of the history older than ``history_keep``."""
    _pruned_at: float = 0.0

    def _query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql if self._MARK == "?" else sql.replace("?", self._MARK)

    # -- schema ---------------------------------------------------------------------------------

    def open_views(self) -> None:
        """Create the console's tables if needed, and fill ``device_summary`` for a store that
        had devices before it existed."""
        for statement in _DDL:
            self._conn.execute(statement)
        if "doc" not in {row["name"] for row in self._summary_columns()}:  # from before ``doc``
            self._conn.execute("DROP TABLE device_summary")
            for statement in _DDL:
                self._conn.execute(statement)
        have = self._query("SELECT count(*) AS n FROM device_summary")[0]["n"]
        devices = self._query("SELECT count(*) AS n FROM devices")[0]["n"]
        sample = self._query("SELECT doc FROM device_summary LIMIT 1")
        stale = bool(sample) and set(codec.loads(sample[0]["doc"])) != STATIC_KEYS
        if devices > have or stale:
            self._backfill()

    def _summary_columns(self) -> list[dict[str, Any]]:
        if self._MARK == "?":
            return self._query("SELECT name FROM pragma_table_info('device_summary')")
        return self._query(
            "SELECT column_name AS name FROM information_schema.columns "
            "WHERE table_name = 'device_summary' AND table_schema = current_schema()"
        )

    def _backfill(self) -> None:
        now = time.time()
        counts = {
            row["device_id"]: row["n"]
            for row in self._query("SELECT device_id, count(*) AS n FROM quarantine GROUP BY device_id")
        }
        rows = [_summary_row(summarize(s, now), counts.get(s.device_id, 0)) for s in self.devices()]
        with self._transaction() as tx:
            cursor = tx.cursor()
            cursor.executemany(self._sql(_BACKFILL_SUMMARY), rows)
            cursor.close()

    def devices(self) -> list[DeviceState]:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    # -- writing (inside ``Store.write``'s transaction) -------------------------------------------

    def _save_views(
        self, tx: Any, states: list[DeviceState], flush: Flush, items: list[tuple[str, Incoming]], now: float
    ) -> None:
        if not states:
            return
        quarantined: dict[str, int] = {}
        for item in flush.quarantined:
            if item.device_id is not None:
                quarantined[item.device_id] = quarantined.get(item.device_id, 0) + 1
        summaries = {state.device_id: summarize(state, now) for state in states}
        cursor = tx.cursor()
        cursor.executemany(
            self._sql(_UPSERT_SUMMARY),
            [_summary_row(row, quarantined.get(device_id, 0)) for device_id, row in summaries.items()],
        )
        statused = {item.device_id for _, item in items if isinstance(item, Status)} & summaries.keys()
        points = [_history_row(summaries[d], now, self.history_step) for d in sorted(statused)]
        if points:
            cursor.executemany(self._sql(_UPSERT_HISTORY), points)
        if now - self._pruned_at >= self.history_prune_every:
            self._pruned_at = now
            cursor.execute(self._sql("DELETE FROM status_history WHERE at < ?"), (now - self.history_keep,))
        cursor.close()

    # -- reading --------------------------------------------------------------------------------

    def fleet_page(
        self, query: FleetQuery, columns: str = "*", total: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """The summary rows of one page of the fleet, and how many devices match in all (``total``
        when the caller knows it already: the fleet's count, when nothing is filtered)."""
        where, params = query.where()
        order, order_params = query.order()
        if query.limit is None:
            rows = self._query(self._sql(f"SELECT {columns} FROM device_summary{where}{order}"),
                               [*params, *order_params])
            return rows, len(rows)
        rows = self._page_rows(columns, f"{where}{order} LIMIT ? OFFSET ?",
                               [*params, *order_params, query.limit, query.offset])
        if query.offset == 0 and len(rows) < query.limit:
            return rows, len(rows)
        if total is not None:
            return rows, total
        total = self._query(self._sql(f"SELECT count(*) AS n FROM device_summary{where}"), params)[0]["n"]
        return rows, int(total)

    def _page_rows(self, columns: str, rest: str, params: list[Any]) -> list[dict[str, Any]]:
        """A page in two steps: sort only the ids, then read the page's whole rows by id. Sorting
        10,000 whole rows (each with its ``doc``) to keep 50 took twice as long as sorting ids."""
        ids = [row["device_id"] for row in self._query(
            self._sql(f"SELECT device_id FROM device_summary{rest}"), params)]
        if not ids:
            return []
        wanted = columns if columns == "*" else f"device_id, {columns}"
        rows = self._query(self._sql(
            f"SELECT {wanted} FROM device_summary WHERE device_id IN ({', '.join('?' * len(ids))})"), ids)
        place = {device_id: index for index, device_id in enumerate(ids)}
        return sorted(rows, key=lambda row: place[row["device_id"]])

    def fleet_docs(self, query: FleetQuery) -> tuple[list[dict[str, Any]], int]:
        """Like ``fleet_page``, only each row's ``doc`` and live columns (``summary.api_list_json``)."""
        return self.fleet_page(query, ", ".join(("doc", *LIVE_COLUMNS)))

    def fleet_totals(self, query: FleetQuery) -> dict[str, Any]:
        """Counts and sums over the whole fleet, and the device whose oldest unsent record is
        the oldest (``worst``)."""
        silent_before = query.now - query.silent_after
        totals = self._query(
            self._sql(_FLEET_TOTALS), [silent_before, silent_before, query.now - query.behind_after]
        )[0]
        worst = self._query(_WORST_LAG)
        return {k: (float(v) if k == "send_rate" else int(v)) for k, v in totals.items()} | {
            "worst": worst[0] if worst else None
        }

    def device_summary(self, device_id: str) -> dict[str, Any] | None:
        rows = self._query(self._sql("SELECT * FROM device_summary WHERE device_id = ?"), [device_id])
        return rows[0] if rows else None

    def changed_since(self, at: float, limit: int = 1000) -> list[tuple[str, float]]:
        """``(device_id, updated_at)`` of summaries written after ``at`` (oldest first)."""
        rows = self._query(
            self._sql("SELECT device_id, updated_at FROM device_summary WHERE updated_at > ? "
                      "ORDER BY updated_at LIMIT ?"),
            [at, limit],
        )
        return [(row["device_id"], row["updated_at"]) for row in rows]

    def status_history(self, device_id: str, since: float = 0.0, limit: int = 5000) -> list[dict[str, Any]]:
        """A device's figures over time, oldest first: the newest ``limit`` points after ``since``."""
        rows = self._query(
            self._sql(f"SELECT {', '.join(HISTORY_COLUMNS[2:])} FROM status_history "
                      "WHERE device_id = ? AND at > ? ORDER BY bucket DESC LIMIT ?"),
            [device_id, since, limit],
        )
        return rows[::-1]

    def status_histories(
        self, device_ids: list[str], since: float = 0.0, limit: int = 5000
    ) -> dict[str, list[dict[str, Any]]]:
        """``status_history`` of several devices in one query (a page of the fleet's sparklines:
        one round trip instead of one per device), every listed device present."""
        out: dict[str, list[dict[str, Any]]] = {device_id: [] for device_id in device_ids}
        if not device_ids:
            return out
        marks = ", ".join("?" * len(device_ids))
        rows = self._query(
            self._sql(f"SELECT device_id, {', '.join(HISTORY_COLUMNS[2:])} FROM ("
                      "SELECT *, row_number() OVER (PARTITION BY device_id ORDER BY bucket DESC) AS newest "
                      f"FROM status_history WHERE device_id IN ({marks}) AND at > ?"
                      ") AS recent WHERE newest <= ? ORDER BY device_id, bucket"),
            [*device_ids, since, limit],
        )
        for row in rows:
            out[row.pop("device_id")].append(row)
        return out

    def streams(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Each stream of a device with its newest record (``seq``, ``ts``, ``data``)."""
        names = [row["stream"] for row in self._query(self._sql(_STREAMS), [device_id, device_id, limit])]
        out = []
        for name in names:
            latest = self.latest_records(device_id, name, 1)
            if latest:
                out.append({"stream": name, **latest[0]})
        return out

    def latest_records(self, device_id: str, stream: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` records of one stream, in seq order."""
        rows = self._query(
            self._sql("SELECT seq, ts, CAST(data AS TEXT) AS data FROM records "
                      "WHERE device_id = ? AND stream = ? ORDER BY seq DESC LIMIT ?"),
            [device_id, stream, limit],
        )
        return [{"seq": r["seq"], "ts": r["ts"], "data": codec.loads(r["data"])} for r in reversed(rows)]

    def dropped_ranges(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The ranges of records a device announced as dropped, newest first."""
        return self._query(
            self._sql("SELECT first_seq, last_seq, reason, at FROM dropped WHERE device_id = ? "
                      "ORDER BY at DESC, first_seq DESC LIMIT ?"),
            [device_id, limit],
        )


def _summary_row(row: dict[str, Any], quarantined: int) -> tuple[Any, ...]:
    return (*(row[c] for c in SUMMARY_COLUMNS), quarantined)


def _history_row(row: dict[str, Any], now: float, step: float) -> tuple[Any, ...]:
    at = row["status_at"] if row["status_at"] is not None else now
    return (
        row["device_id"], int(at // step), at, row["online"], row["backlog"], row["backlog_bytes"],
        row["oldest_unsent_age_s"], row["send_rate"], row["dropped_total"], row["errors_total"],
    )

"""The cloud store on PostgreSQL (psycopg 3), for fleets and for several ingest workers.

Records arrive by ``COPY`` into a temporary table and move with one
``INSERT ... ON CONFLICT DO NOTHING`` per flush, which is both the fastest way in and the
idempotent one. Device rows are locked (``FOR UPDATE``, in device-id order, so two workers never
deadlock) for the length of the transaction that updates them: several workers sharing one
subscription then keep each device's ack consistent.

A ``schema`` query parameter (``postgresql://.../db?schema=edge``) puts the tables in that
schema, created if needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from agent import codec
from cloud_sync.server.ledger import DeviceState, Flush, Quarantined
from cloud_sync.server.store.base import Store, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    device_id TEXT NOT NULL, seq BIGINT NOT NULL, stream TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, data JSONB NOT NULL, received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, seq));
CREATE INDEX IF NOT EXISTS records_stream ON records (device_id, stream, seq);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, epoch TEXT, acked_seq BIGINT, max_seq BIGINT, ranges TEXT,
    records BIGINT, duplicates BIGINT, bad_records BIGINT, dropped TEXT, lost BIGINT,
    messages BIGINT, first_seen DOUBLE PRECISION, last_seen DOUBLE PRECISION,
    last_sync DOUBLE PRECISION, online BOOLEAN, status TEXT, status_at DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS dropped (
    device_id TEXT NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL,
    reason TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device_id, first_seq));
CREATE TABLE IF NOT EXISTS quarantine (
    id BIGSERIAL PRIMARY KEY, device_id TEXT, topic TEXT NOT NULL, seq BIGINT,
    reason TEXT NOT NULL, detail TEXT NOT NULL, payload BYTEA, size INTEGER, at DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS quarantine_device ON quarantine (device_id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
"""

_COLUMNS = (
    "device_id",
    "epoch",
    "acked_seq",
    "max_seq",
    "ranges",
    "records",
    "duplicates",
    "bad_records",
    "dropped",
    "lost",
    "messages",
    "first_seen",
    "last_seen",
    "last_sync",
    "online",
    "status",
    "status_at",
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class PostgresStore(Store):
    _MARK = "%s"  # psycopg's placeholder, for the SQL shared with SQLite (views.py)

    def __init__(self, url: str, conninfo: str, schema: str | None, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self.url = url
        self._conninfo = conninfo
        self._schema = schema
        self._conn = conn

    @classmethod
    def open(cls, url: str) -> PostgresStore:
        conninfo, schema = split_schema(url)
        try:
            conn = cls._connect(conninfo, schema)
            with conn.transaction():
                if schema:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                conn.execute(_SCHEMA)
        except psycopg.Error as exc:
            raise StoreError(url, f"cannot open the PostgreSQL store: {str(exc).strip()}") from exc
        return cls(url, conninfo, schema, conn)

    @staticmethod
    def _connect(conninfo: str, schema: str | None) -> psycopg.Connection[Any]:
        extra = {"options": f"-c search_path={schema}"} if schema else {}
        return psycopg.connect(make_conninfo(conninfo, connect_timeout=10, **extra), autocommit=True)

    # -- writing --------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self._conn.transaction():
            yield self._conn

    def _load_states(self, tx: psycopg.Connection[Any], ids: list[str], now: float) -> dict[str, DeviceState]:
        if not ids:
            return {}
        tx.execute(
            "INSERT INTO devices (device_id, first_seen) SELECT unnest(%s::text[]), %s "
            "ON CONFLICT (device_id) DO NOTHING",
            (ids, now),
        )
        cursor = tx.cursor(row_factory=dict_row)
        cursor.execute(
            "SELECT * FROM devices WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE", (ids,)
        )
        return {row["device_id"]: DeviceState.from_row(row) for row in cursor}

    def _insert_records(self, tx: psycopg.Connection[Any], flush: Flush) -> dict[str, int]:
        tx.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE records) ON COMMIT DELETE ROWS")
        with tx.cursor() as cursor:
            with cursor.copy(
                "COPY incoming (device_id, seq, stream, ts, data, received_at) FROM STDIN"
            ) as copy:
                received_at = flush.received_at
                for device_id, records in flush.batches:
                    for record in records:
                        copy.write_row((device_id, *record, received_at))
            cursor.execute(
                "WITH new AS (INSERT INTO records SELECT * FROM incoming "
                "ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id) "
                "SELECT device_id, count(*) FROM new GROUP BY device_id"
            )
            return {device_id: count for device_id, count in cursor}

    def _insert_dropped(
        self, tx: psycopg.Connection[Any], rows: list[tuple[str, int, int, str, float]]
    ) -> None:
        with tx.cursor() as cursor:
            cursor.executemany("INSERT INTO dropped VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)

    def _insert_quarantined(self, tx: psycopg.Connection[Any], items: list[Quarantined], now: float) -> None:
        with tx.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO quarantine (device_id, topic, seq, reason, detail, payload, size, at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [(q.device_id, q.topic, q.seq, q.reason, q.detail, q.payload, q.size, now) for q in items],
            )

    def _save_states(self, tx: psycopg.Connection[Any], states: list[DeviceState]) -> None:
        if not states:
            return
        sets = ", ".join(f"{c} = %({c})s" for c in _COLUMNS if c != "device_id")
        with tx.cursor() as cursor:
            cursor.executemany(
                f"UPDATE devices SET {sets} WHERE device_id = %(device_id)s",
                [state.as_row() for state in states],
            )

    def _add_counters(self, tx: psycopg.Connection[Any], counters: dict[str, int]) -> None:
        with tx.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO counters VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                sorted(counters.items()),
            )

    # -- reading --------------------------------------------------------------------------------

    def _reader(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect(self._conninfo, self._schema)
            self._local.conn = conn
        return conn

    def _query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        try:
            with self._reader().cursor(row_factory=dict_row) as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        except psycopg.OperationalError:
            self._local.conn = None  # reconnect on the next call
            raise

    def devices(self) -> list[DeviceState]:
        return [DeviceState.from_row(row) for row in self._query("SELECT * FROM devices ORDER BY device_id")]

    def device(self, device_id: str) -> DeviceState | None:
        rows = self._query("SELECT * FROM devices WHERE device_id = %s", (device_id,))
        return DeviceState.from_row(rows[0]) if rows else None

    def records(
        self, device_id: str, stream: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        sql = "SELECT seq, stream, ts, data::text AS data FROM records WHERE device_id = %s AND seq > %s"
        params: list[Any] = [device_id, after_seq]
        if stream is not None:
            sql += " AND stream = %s"
            params.append(stream)
        rows = self._query(sql + " ORDER BY seq LIMIT %s", [*params, limit])
        return [{**row, "data": codec.loads(row["data"])} for row in rows]

    def quarantined(self, limit: int = 100, device_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, device_id, topic, seq, reason, detail, size, at FROM quarantine"
        params: list[Any] = []
        if device_id is not None:
            sql += " WHERE device_id = %s"
            params.append(device_id)
        return self._query(sql + " ORDER BY id DESC LIMIT %s", [*params, limit])

    def counters(self) -> dict[str, int]:
        return {row["name"]: row["value"] for row in self._query("SELECT name, value FROM counters")}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._conn.close()


def split_schema(url: str) -> tuple[str, str | None]:
    """The libpq URL without our ``schema`` parameter, and the schema it named."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((value for key, value in query if key == "schema"), None)
    if schema is not None and not _NAME.fullmatch(schema):
        raise StoreError(url, f"schema {schema!r}: use letters, digits and '_'")
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    scheme = "postgresql" if parts.scheme == "postgres" else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema

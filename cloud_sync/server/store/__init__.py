"""The cloud store: where the ingest keeps records, device states and what it kept aside.

``open_store(url)`` picks the engine from the URL: ``sqlite:///path/to/file.db`` (the embedded
default) or ``postgresql://user@host:port/dbname``. Both implement ``Store``; the PostgreSQL one
needs the ``cloud`` extra (psycopg).
"""

from __future__ import annotations

from cloud_sync.server.store.base import Store, StoreError


def open_store(url: str) -> Store:
    """Open (creating the schema if needed) the store at ``url``."""
    if url.startswith("sqlite://"):
        from cloud_sync.server.store.sqlite import SqliteStore

        store: Store = SqliteStore.open(url)
    elif url.startswith(("postgresql://", "postgres://")):
        from cloud_sync.server.store.postgres import PostgresStore

        store = PostgresStore.open(url)
    else:
        raise StoreError(url, "use sqlite:///path/to/file.db or postgresql://user@host/dbname")
    try:
        store.open_views()  # the console's tables (views.py)
    except Exception as exc:  # sqlite3 and psycopg errors differ
        store.close()
        raise StoreError(url, f"cannot create the console's tables: {exc}") from exc
    return store


__all__ = ["Store", "StoreError", "open_store"]

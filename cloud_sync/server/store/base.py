"""What every store does, and the one write path they share.

``write`` is a template: in one transaction it locks and loads the touched devices' states,
lets ``ledger.plan_flush`` decide, inserts the records idempotently (``(device_id, seq)`` is the
primary key; a repeat is counted, not stored), and saves what changed. Engines supply the SQL.

Reads (the JSON API) use a connection per thread, apart from the writer's.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from cloud_sync.protocol import DataBatch, RawRow
from cloud_sync.server.ledger import DeviceState, Flush, Incoming, Quarantined, Status, plan_flush, settle
from cloud_sync.server.store.views import ConsoleViews


class StoreError(Exception):
    """The store cannot be opened or used (bad URL, unreachable server, wrong schema)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{redact(url)}: {reason}")


def redact(url: str) -> str:
    """``url`` without a password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.rsplit("@", 1)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}" if ":" in userinfo else url


class Store(ConsoleViews, ABC):
    """A cloud store. ``write`` is called from one thread at a time; reads from any thread."""

    url: str

    def __init__(self) -> None:
        self._local = threading.local()

    # -- writing --------------------------------------------------------------------------------

    def write(
        self, items: list[tuple[str, Incoming]], now: float | None = None
    ) -> tuple[Flush, dict[str, DeviceState]]:
        """Store decoded messages ``(topic, item)`` in one transaction; return what was written
        and the touched devices' new states (for their acks)."""
        now = time.time() if now is None else now
        ids = sorted({device for _, item in items if (device := _device_of(item)) is not None})
        with self._transaction() as tx:
            states = self._load_states(tx, ids, now)
            flush = plan_flush(states, items, now)
            inserted = self._insert_records(tx, flush) if flush.batches else {}
            settle(states, flush, inserted)
            if flush.dropped:
                self._insert_dropped(tx, flush.dropped)
            if flush.quarantined:
                self._insert_quarantined(tx, flush.quarantined, now)
            self._save_states(tx, [states[i] for i in ids])
            self._save_views(tx, [states[i] for i in ids], flush, items, now)
            if flush.counters:
                self._add_counters(tx, flush.counters)
        return flush, states

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]: ...

    @abstractmethod
    def _load_states(self, tx: Any, ids: list[str], now: float) -> dict[str, DeviceState]:
        """Lock and load (creating) the state of each device in ``ids``."""

    @abstractmethod
    def _insert_records(self, tx: Any, flush: Flush) -> dict[str, int]:
        """Insert what is not there yet; return how many rows each device really got."""

    @abstractmethod
    def _insert_dropped(self, tx: Any, rows: list[tuple[str, int, int, str, float]]) -> None: ...

    @abstractmethod
    def _insert_quarantined(self, tx: Any, items: list[Quarantined], now: float) -> None: ...

    @abstractmethod
    def _save_states(self, tx: Any, states: list[DeviceState]) -> None: ...

    @abstractmethod
    def _add_counters(self, tx: Any, counters: dict[str, int]) -> None: ...

    # -- reading --------------------------------------------------------------------------------

    @abstractmethod
    def devices(self) -> list[DeviceState]: ...

    @abstractmethod
    def device(self, device_id: str) -> DeviceState | None: ...

    @abstractmethod
    def records(
        self, device_id: str, stream: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Stored records of a device in seq order: ``seq``, ``stream``, ``ts``, ``data``."""

    @abstractmethod
    def quarantined(self, limit: int = 100, device_id: str | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def counters(self) -> dict[str, int]: ...

    @abstractmethod
    def close(self) -> None: ...


def _device_of(item: Incoming) -> str | None:
    if isinstance(item, DataBatch | Status | Quarantined):
        return item.device_id
    return None


def records_by_device(flush: Flush) -> Iterator[tuple[str, list[RawRow]]]:
    """The flush's records in runs of one device (consecutive batches of a device merged)."""
    for device, run in groupby(flush.batches, key=itemgetter(0)):
        lists = [records for _, records in run]
        yield device, lists[0] if len(lists) == 1 else list(chain.from_iterable(lists))

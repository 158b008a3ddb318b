"""The cloud store, the same tests on SQLite and on PostgreSQL (skipped, saying why, without one)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.codec import dumps
from cloud_sync.protocol import BadRecord, DataBatch, DroppedRange, Record
from cloud_sync.server.ledger import Quarantined, Status
from cloud_sync.server.store import Store, StoreError, open_store
from cloud_sync.server.store.postgres import split_schema
from cloud_sync.server.store.sqlite import sqlite_path


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/cloud.db"
    return str(request.getfixturevalue("pg_url")) + "?schema=edge_cloud"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def data(device: str, seqs, *, epoch="e1", stream="win", dropped=(), bad=(), released=0):
    records = [Record(s, stream, 1000.0 + s, dumps({"count": s % 7, "sensor": "t1"})) for s in seqs]
    bad_records = [BadRecord(s, "records[0].ts: not a finite number", {"seq": s}) for s in bad]
    return (f"edge/{device}/data", DataBatch(device, epoch, released, records, bad_records, list(dropped)))


def test_records_are_stored_once_and_repeats_are_counted(store: Store) -> None:
    store.write([data("gw-1", range(1, 101))])
    flush, states = store.write([data("gw-1", range(51, 151)), data("gw-1", [150, 151])])
    assert flush.counters["records"] == 51 and flush.counters["duplicates"] == 51
    state = states["gw-1"]
    assert (state.acked, state.records, state.duplicates) == (151, 151, 51)
    rows = store.records("gw-1", limit=10_000)
    assert [r["seq"] for r in rows] == list(range(1, 152))
    assert rows[0] == {"seq": 1, "stream": "win", "ts": 1001.0, "data": {"count": 1, "sensor": "t1"}}


def test_large_flushes_count_repeats_exactly_across_statements(store: Store) -> None:
    # SQLite inserts 250 rows a statement and the rest one by one: repeats at every boundary.
    store.write([data("gw-1", range(1, 301)), data("gw-2", range(1, 11))])
    flush, states = store.write([data("gw-1", range(200, 701)), data("gw-2", range(5, 1006))])
    assert flush.counters["records"] == 400 + 995 and flush.counters["duplicates"] == 101 + 6
    assert (states["gw-1"].acked, states["gw-1"].records, states["gw-1"].duplicates) == (700, 700, 101)
    assert (states["gw-2"].acked, states["gw-2"].records, states["gw-2"].duplicates) == (1005, 1005, 6)
    assert [r["seq"] for r in store.records("gw-1", limit=10_000)] == list(range(1, 701))


def test_device_states_survive_reopening(store_url: str) -> None:
    first = open_store(store_url)
    first.write([data("gw-1", [1, 2, 5])])
    first.close()
    again = open_store(store_url)
    try:
        state = again.device("gw-1")
        assert state is not None and (state.acked, state.max_seq, state.ranges) == (2, 5, [(5, 5)])
        _, states = again.write([data("gw-1", [3, 4])])
        assert states["gw-1"].acked == 5 and states["gw-1"].missing == 0
    finally:
        again.close()


def test_reading_records_by_stream_after_a_seq_with_a_limit(store: Store) -> None:
    store.write([data("gw-1", range(1, 11), stream="a"), data("gw-1", range(11, 21), stream="b")])
    store.write([data("gw-2", range(1, 5), stream="a")])
    assert [r["seq"] for r in store.records("gw-1", "a", after_seq=3, limit=4)] == [4, 5, 6, 7]
    assert [r["seq"] for r in store.records("gw-1", "b", after_seq=0, limit=3)] == [11, 12, 13]
    assert store.records("gw-1", "c") == [] and store.records("nobody") == []
    assert [d.device_id for d in store.devices()] == ["gw-1", "gw-2"]


def test_dropped_bad_and_quarantined_are_kept_and_counted(store: Store) -> None:
    store.write(
        [
            data("gw-1", [1, 2], bad=[3], dropped=[DroppedRange(4, 9, "buffer_full")]),
            (
                "edge/gw-1/data",
                Quarantined("edge/gw-1/data", "bad_json", "body is not JSON", b"{oops", 5, "gw-1"),
            ),
            ("edge/x y/data", Quarantined("edge/x y/data", "bad_device_id", "bad id", b"", 0, None)),
            ("edge/gw-1/status", Status("gw-1", {"online": True, "backlog": {"rows": 3}}, 5.0)),
        ]
    )
    state = store.device("gw-1")
    assert state is not None
    assert (state.acked, state.records, state.bad_records, state.dropped) == (9, 2, 1, {"buffer_full": 6})
    assert state.online is True and state.status["backlog"] == {"rows": 3}
    kept = store.quarantined()
    assert {(q["reason"], q["device_id"], q["seq"]) for q in kept} == {
        ("bad_record", "gw-1", 3),
        ("bad_json", "gw-1", None),
        ("bad_device_id", None, None),
    }
    assert len(store.quarantined(device_id="gw-1")) == 2
    counters = store.counters()
    assert counters["quarantined.bad_json"] == 1 and counters["records"] == 2


def test_a_new_outbox_reusing_seqs_is_refused_until_it_renumbers(store: Store) -> None:
    store.write([data("gw-1", [1, 2, 3])])
    flush, states = store.write([data("gw-1", [1, 2], epoch="e2")])
    assert states["gw-1"].epoch == "e1" and flush.counters["epoch_conflicts"] == 1
    _, states = store.write([data("gw-1", [4, 5], epoch="e2")])
    assert (states["gw-1"].epoch, states["gw-1"].acked, states["gw-1"].records) == ("e2", 5, 5)


def test_concurrent_writers_keep_each_device_consistent(store_url: str) -> None:
    """Two ingest workers sharing a subscription get alternate batches of the same device."""
    stores = [open_store(store_url) for _ in range(2)]
    errors: list[BaseException] = []

    def work(store: Store, offset: int) -> None:
        try:
            for start in range(offset * 50 + 1, 2001, 100):
                store.write([data("gw-1", range(start, start + 50)), data("gw-2", range(start, start + 50))])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        for device in ("gw-1", "gw-2"):
            state = stores[0].device(device)
            assert state is not None and (state.acked, state.records, state.duplicates) == (2000, 2000, 0)
    finally:
        for opened in stores:
            opened.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [("mysql://x/y", "use sqlite"), ("sqlite://", "sqlite:///"), ("sqlite:///", "sqlite:///")],
)
def test_bad_store_urls_are_refused_by_name(url: str, problem: str) -> None:
    with pytest.raises(StoreError, match=problem):
        open_store(url)


def test_an_unreachable_postgresql_says_so_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        open_store("postgresql://edge:s3cret@127.0.0.1:1/nowhere?connect_timeout=2")
    assert "s3cret" not in str(caught.value) and "cannot open" in str(caught.value)


def test_url_helpers() -> None:
    assert sqlite_path("sqlite:////var/lib/cloud.db") == Path("/var/lib/cloud.db")
    assert sqlite_path("sqlite:///cloud.db") == Path("cloud.db").absolute()
    assert split_schema("postgresql://u@h/db?schema=s1&sslmode=disable") == (
        "postgresql://u@h/db?sslmode=disable",
        "s1",
    )
    with pytest.raises(StoreError):
        split_schema("postgresql://u@h/db?schema=x;drop")

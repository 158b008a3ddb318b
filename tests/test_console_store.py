"""The console's store queries, the same tests on SQLite and on PostgreSQL: the fleet's summary
rows (kept in the ingest's transaction), paging, sorting and filtering, totals, status history,
streams and latest records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import codec
from agent.codec import dumps
from cloud_sync.protocol import DataBatch, DroppedRange, Record
from cloud_sync.server.ledger import Quarantined, Status
from cloud_sync.server.store import Store, open_store
from cloud_sync.server.store.fleet_query import FleetQuery, QueryError
from cloud_sync.server.store.summary import api_list_json, api_object, connection_state

NOW = 10_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/cloud.db"
    else:
        url = str(request.getfixturevalue("pg_url")) + "?schema=console"
    opened = open_store(url)
    yield opened
    opened.close()


def status(device: str, at: float = NOW, **doc: object) -> tuple[str, Status]:
    return (f"edge/{device}/status", Status(device, {"online": True, **doc}, at))


def batch(device: str, seqs: range, stream: str = "win", **extra: object) -> tuple[str, DataBatch]:
    records = [Record(s, stream, 1000.0 + s, dumps({"sensor": "t1", "mean": s / 2, **extra})) for s in seqs]
    return (f"edge/{device}/data", DataBatch(device, "e1", 0, records))


def fleet(store: Store, now: float = NOW, **params: str) -> list[str]:
    rows, _ = store.fleet_page(FleetQuery.parse(params, now=now))
    return [row["device_id"] for row in rows]


def seed_fleet(store: Store) -> None:
    """Five devices: one offline, one silent, one far behind, one a little behind, one fine."""
    store.write([
        status("ok", backlog={"rows": 0, "bytes": 0}, version="1.2"),
        status("little", backlog={"rows": 10, "bytes": 900, "oldest_unsent_age_s": 20.0}),
        status("far", backlog={"rows": 500, "bytes": 90_000, "oldest_unsent_age_s": 3600.0}),
        status("gone", backlog={"rows": 5, "bytes": 100, "oldest_unsent_age_s": 10.0}),
    ], now=NOW)
    quiet = status("quiet", at=NOW - 1000, backlog={"rows": 1, "bytes": 10, "oldest_unsent_age_s": 1.0})
    store.write([quiet], now=NOW - 1000)
    store.write([("edge/gone/status", Status("gone", {"online": False}, NOW))], now=NOW)


def test_a_summary_row_follows_every_write_and_ages_its_lag(store: Store) -> None:
    store.write([batch("gw-1", range(1, 11)), status("gw-1", version="0.3", send_rate=4.5,
                 backlog={"rows": 7, "bytes": 700, "oldest_unsent_age_s": 30.0},
                 dropped={"buffer_full": 3}, errors={"resends": 2, "refused": 1}, last_error="boom",
                 config_version="c-17", clock={"time": NOW + 0.5, "synced": True})], now=NOW)
    row = store.device_summary("gw-1")
    assert row is not None
    device = api_object(row, NOW + 10)
    assert device["records"] == 10 and device["acked_seq"] == 10 and device["backlog"] == 7
    assert device["oldest_unsent_age_s"] == 40.0  # 30 s at the status, 10 s since
    assert device["dropped"] == {"buffer_full": 3} and device["dropped_total"] == 3
    assert device["errors"] == {"resends": 2, "refused": 1} and device["errors_total"] == 3
    assert (device["version"], device["config_version"], device["last_error"]) == ("0.3", "c-17", "boom")
    assert device["clock_skew_s"] == 0.5 and device["clock_synced"] is True
    assert device["state"] == "online" and device["send_rate"] == 4.5


def test_quarantined_messages_are_counted_per_device(store: Store) -> None:
    bad = Quarantined("edge/gw-1/data", "bad_json", "not JSON", b"{", 1, "gw-1")
    store.write([("edge/gw-1/data", bad), ("edge/gw-1/data", bad), status("gw-1")], now=NOW)
    store.write([("edge/gw-1/data", bad)], now=NOW + 1)
    row = store.device_summary("gw-1")
    assert row is not None and row["quarantined"] == 3


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["gone", "quiet", "far", "little", "ok"]),  # offline, silent, then most behind first
        ({"show": "offline"}, ["gone"]),
        ({"show": "silent"}, ["quiet"]),
        ({"show": "behind"}, ["quiet", "far"]),  # quiet's oldest unsent has aged 1001 s
        ({"show": "online"}, ["far", "little", "ok"]),
        ({"show": "problems"}, ["gone", "quiet", "far"]),
        ({"sort": "backlog"}, ["far", "little", "gone", "quiet", "ok"]),
        ({"sort": "backlog", "order": "asc"}, ["ok", "quiet", "gone", "little", "far"]),
        ({"sort": "lag"}, ["far", "quiet", "little", "gone", "ok"]),
        ({"sort": "device"}, ["far", "gone", "little", "ok", "quiet"]),
        ({"sort": "version", "order": "asc"}, ["ok", "far", "gone", "little", "quiet"]),
        ({"q": "I"}, ["quiet", "little"]),
        ({"q": "%"}, []),
        ({"sort": "device", "limit": "2", "offset": "2"}, ["little", "ok"]),
    ],
)
def test_the_fleet_sorts_filters_and_pages(store: Store, params: dict[str, str], expected: list[str]) -> None:
    seed_fleet(store)
    assert fleet(store, **params) == expected


def test_the_total_counts_every_match_not_just_the_page(store: Store) -> None:
    store.write([status(f"gw-{i:03d}") for i in range(120)], now=NOW)
    rows, total = store.fleet_page(FleetQuery.parse({"limit": "50", "offset": "100"}, now=NOW))
    assert len(rows) == 20 and total == 120
    rows, total = store.fleet_page(FleetQuery.parse({"q": "gw-00", "limit": "5"}, now=NOW))
    assert len(rows) == 5 and total == 10


def test_the_device_list_json_is_the_api_objects(store: Store) -> None:
    seed_fleet(store)
    store.write([batch("ok", range(1, 4)), status("ok", errors={"n": 1}, last_error='"quoted"\n')], now=NOW)
    query = FleetQuery.parse({}, default_sort="device", default_limit=None, now=NOW + 7)
    rows, _ = store.fleet_page(query)
    docs, total = store.fleet_docs(query)
    assert total == 5 and codec.loads(api_list_json(docs, NOW + 7)) == [api_object(r, NOW + 7) for r in rows]


def test_fleet_totals(store: Store) -> None:
    seed_fleet(store)
    totals = store.fleet_totals(FleetQuery(now=NOW))
    assert {k: totals[k] for k in ("devices", "online", "offline", "silent", "behind", "backlog")} == {
        "devices": 5, "online": 3, "offline": 1, "silent": 1, "behind": 2, "backlog": 516,
    }
    assert totals["worst"]["device_id"] == "far"


@pytest.mark.parametrize(
    ("params", "says"),
    [({"show": "bad"}, "show"), ({"sort": "x"}, "sort"), ({"order": "up"}, "order"),
     ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"offset": "-1"}, "offset")],
)
def test_bad_fleet_parameters_are_named(params: dict[str, str], says: str) -> None:
    with pytest.raises(QueryError, match=says):
        FleetQuery.parse(params)


def test_status_history_keeps_one_point_per_step_and_prunes(store: Store) -> None:
    store.history_step = 10.0
    for i, at in enumerate([100.0, 103.0, 111.0, 125.0]):
        store.write([status("gw-1", at=at, backlog={"rows": i, "oldest_unsent_age_s": 1.0})], now=at)
    points = store.status_history("gw-1")
    assert [(p["at"], p["backlog"]) for p in points] == [(103.0, 1), (111.0, 2), (125.0, 3)]
    assert [p["at"] for p in store.status_history("gw-1", since=105.0, limit=1)] == [125.0]
    store.write([("edge/gw-1/status", Status("gw-1", {"online": False}, 131.0))], now=131.0)
    assert store.status_history("gw-1")[-1]["online"] == 0
    store.history_keep, store.history_prune_every = 20.0, 0.0
    store.write([status("gw-1", at=140.0)], now=140.0)
    assert [p["at"] for p in store.status_history("gw-1")] == [125.0, 131.0, 140.0]


def test_status_histories_of_a_page_in_one_query_match_each_device_s(store: Store) -> None:
    store.history_step = 10.0
    for at in (100.0, 111.0, 125.0, 138.0):
        store.write([status("gw-1", at=at, backlog={"rows": int(at)}), status("gw-2", at=at + 1)], now=at)
    ids = ["gw-2", "gw-1", "never"]
    for since, limit in ((0.0, 5000), (105.0, 5000), (0.0, 2)):
        histories = store.status_histories(ids, since=since, limit=limit)
        assert list(histories) == ids and histories["never"] == []
        for device_id in ("gw-1", "gw-2"):
            assert histories[device_id] == store.status_history(device_id, since=since, limit=limit)
    assert store.status_histories([]) == {}


def test_streams_latest_records_and_dropped_ranges(store: Store) -> None:
    store.write([batch("gw-1", range(1, 6), "win"), batch("gw-1", range(6, 9), "alerts", event="raised"),
                 batch("gw-2", range(1, 3), "other")], now=NOW)
    dropped = [DroppedRange(9, 12, "buffer_full"), DroppedRange(13, 13, "bloat")]
    store.write([("edge/gw-1/data", DataBatch("gw-1", "e1", 0, [], dropped=dropped))], now=NOW + 5)
    streams = store.streams("gw-1")
    assert [(s["stream"], s["seq"]) for s in streams] == [("alerts", 8), ("win", 5)]
    assert streams[0]["data"]["event"] == "raised"
    assert [r["seq"] for r in store.latest_records("gw-1", "win", 3)] == [3, 4, 5]
    assert store.latest_records("gw-1", "nope") == [] and store.streams("nobody") == []
    ranges = store.dropped_ranges("gw-1")
    assert [(r["first_seq"], r["last_seq"], r["reason"]) for r in ranges] == [
        (13, 13, "bloat"), (9, 12, "buffer_full")
    ]


def test_changes_since_a_time(store: Store) -> None:
    store.write([status("a")], now=NOW)
    store.write([status("b")], now=NOW + 2)
    assert store.changed_since(NOW + 1) == [("b", NOW + 2)]
    assert [d for d, _ in store.changed_since(0)] == ["a", "b"]


def test_a_store_from_before_the_console_gets_its_summaries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    first = open_store(url)
    first.write([batch("gw-1", range(1, 4)), status("gw-1", backlog={"rows": 2}),
                 ("edge/gw-1/data", Quarantined("edge/gw-1/data", "bad_json", "x", b"", 0, "gw-1"))], now=NOW)
    first._conn.execute("DROP TABLE device_summary")
    first.close()
    again = open_store(url)
    try:
        row = again.device_summary("gw-1")
        assert row is not None and (row["records"], row["backlog"], row["quarantined"]) == (3, 2, 1)
    finally:
        again.close()


def test_summaries_written_by_an_older_console_are_written_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    first = open_store(url)
    first.write([status("gw-1", version="0.9")], now=NOW)
    first._conn.execute("""UPDATE device_summary SET doc = '{"device_id": "gw-1"}'""")
    first.close()
    again = open_store(url)
    try:
        docs, _ = again.fleet_docs(FleetQuery(now=NOW))
        assert codec.loads(api_list_json(docs, NOW))[0]["version"] == "0.9"
    finally:
        again.close()


@pytest.mark.parametrize(
    ("online", "seen", "state"),
    [(None, NOW, "unknown"), (0, NOW, "offline"), (1, NOW - 30, "online"), (1, NOW - 500, "silent")],
)
def test_connection_states(online: int | None, seen: float, state: str) -> None:
    assert connection_state({"online": online, "last_seen": seen}, NOW) == state

"""The outbox file: transactions, seq that only grows, the byte budget, batches, read-only use."""

from __future__ import annotations

import sqlite3

import pytest

from agent.errors import OutboxError
from agent.outbox import Changes, Outbox, Quarantined


def add(box: Outbox, n: int, stream: str = "s", payload: str = "x") -> None:
    box.commit(Changes(records=[(stream, float(i), {"i": i, "p": payload}) for i in range(n)]))


def seqs(box: Outbox) -> list[int]:
    return [r.seq for r in box.unsent()]


def test_seq_only_grows_across_acks_and_reopen(tmp_path):
    box = Outbox.open(tmp_path)
    add(box, 5)
    assert seqs(box) == [1, 2, 3, 4, 5]
    assert box.acknowledge(5) == 5
    assert seqs(box) == [] and box.last_seq() == 5
    box.close()

    box = Outbox.open(tmp_path)
    add(box, 2)
    assert seqs(box) == [6, 7]  # never reused, even with the table empty in between
    assert box.meta("last_ack_seq") == 5
    box.close()


def test_a_commit_is_all_or_nothing(tmp_path):
    box = Outbox.open(tmp_path)
    add(box, 3)
    box._conn.execute(
        "CREATE TEMP TRIGGER fail BEFORE INSERT ON outbox WHEN NEW.stream = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    bad = Changes(records=[("s", 1.0, {"ok": 1}), ("boom", 2.0, {"ok": 2})])
    bad.counters[("dropped", "x")] = 1
    with pytest.raises(sqlite3.IntegrityError):
        box.commit(bad)
    assert box.counters() == {}
    assert seqs(box) == [1, 2, 3]
    assert box.backlog()["rows"] == 3
    box.close()


def test_a_record_json_cannot_hold_is_counted_once_though_its_commit_is_tried_again(tmp_path):
    box = Outbox.open(tmp_path)
    box._conn.execute(
        "CREATE TEMP TRIGGER fail BEFORE INSERT ON outbox WHEN NEW.stream = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    changes = Changes(records=[("s", 1.0, {"when": {1, 2}}), ("boom", 2.0, {"ok": 2})])
    with pytest.raises(sqlite3.IntegrityError):
        box.commit(changes)
    box._conn.execute("DROP TRIGGER fail")
    box.commit(changes)  # what the committer does with a failed commit's changes
    assert box.counters() == {"dropped": {"not_serialisable": 1}}
    assert box.quarantine_count() == 1 and seqs(box) == [1]
    box.close()


def test_counters_quarantine_state_and_health_commit_with_the_records(tmp_path):
    box = Outbox.open(tmp_path)
    changes = Changes(records=[("s", 1.0, {"v": 1})])
    changes.counters[("dropped", "not_json")] = 2
    changes.quarantined.append(Quarantined("m", "sensors/t1", 1.0, {"value": -1}, "ValueError: neg"))
    changes.module_state["m"] = {"last": 3}
    changes.health["agent"] = {"pid": 1}
    box.commit(changes)
    again = Changes()
    again.counters[("dropped", "not_json")] = 3
    box.commit(again)
    assert box.counters() == {"dropped": {"not_json": 5}}
    assert box.quarantine_count() == 1 and box.quarantined()[0]["error"] == "ValueError: neg"
    assert box.module_states() == {"m": {"last": 3}}
    assert box.health()["agent"][0] == {"pid": 1}
    box.close()


def test_the_byte_budget_drops_the_oldest_and_counts_them(tmp_path):
    box = Outbox.open(tmp_path, max_bytes=300_000)
    for _ in range(10):
        add(box, 300, payload="y" * 80)  # ~110 bytes each: 330 kB of rows in 10 commits
    commit_bytes = 300 * 110 * 2  # a commit's own pages, and their copy in the WAL
    assert box.footprint() <= 300_000 + commit_bytes
    backlog = box.backlog()
    dropped = box.counters()["dropped"]["buffer_full"]
    assert dropped >= 1 and backlog["rows"] == 3000 - dropped
    assert seqs(box)[0] == dropped + 1  # the oldest went first
    ranges = box._conn.execute("SELECT min(first_seq), max(last_seq), reason FROM dropped_ranges").fetchall()
    assert ranges == [(1, dropped, "buffer_full")]
    box.close()


def test_the_byte_budget_counts_the_wal(tmp_path):
    """A reader that holds its snapshot keeps the WAL from being reused: the WAL grows, and the
    budget, which counts it, drops rows though the rows alone are well under it."""
    box = Outbox.open(tmp_path, max_bytes=1_000_000)
    add(box, 10)
    reader = sqlite3.connect(tmp_path / "outbox.db")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM outbox").fetchone()
    for i in range(40):
        box.commit(Changes(records=[("s", float(i), {"p": "w" * 100})]))
        box.commit(Changes(module_state={"m": {"pad": "z" * 20_000, "i": i}}))  # 40 x 20 kB in the WAL
    wal = (tmp_path / "outbox.db-wal").stat().st_size
    rows = box.backlog()["bytes"]
    assert rows < 20_000 and wal > 1_000_000 - 20_000
    assert box.counters()["dropped"]["buffer_full"] >= 1
    reader.close()
    box.close()


def test_reads_are_bounded_and_an_ack_lets_go_only_what_it_covers(tmp_path):
    box = Outbox.open(tmp_path)
    add(box, 50, payload="z" * 100)
    rows = box.read_rows(after_seq=0, max_records=20, max_bytes=1 << 20)
    assert [row[0] for row in rows] == list(range(1, 21))
    small = box.read_rows(after_seq=20, max_records=100, max_bytes=500)
    assert 1 <= len(small) < 10 and small[0][0] == 21
    assert box.acknowledge(10) == 10
    assert seqs(box)[0] == 11 and box.meta("last_ack_seq") == 10


def test_readonly_sees_what_the_writer_committed_and_refuses_a_missing_outbox(tmp_path):
    writer = Outbox.open(tmp_path)
    add(writer, 3)
    reader = Outbox.open_readonly(tmp_path)
    assert reader.backlog()["rows"] == 3
    add(writer, 2)
    assert reader.backlog()["rows"] == 5
    with pytest.raises(sqlite3.OperationalError):
        reader._conn.execute("DELETE FROM outbox")
    reader.close()
    writer.close()
    with pytest.raises(OutboxError, match="no outbox yet"):
        Outbox.open_readonly(tmp_path / "elsewhere")


def test_wal_mode_and_a_file_that_is_not_a_database(tmp_path):
    box = Outbox.open(tmp_path)
    assert box._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box.integrity_check() == "ok"
    box.close()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "outbox.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match="cannot open the outbox"):
        Outbox.open(broken)


def test_a_record_json_cannot_hold_is_quarantined_and_the_rest_committed(tmp_path):
    box = Outbox.open(tmp_path)
    records = [("s", 1.0, {"ok": 1}), ("s", 2.0, {"tags": {"a", "b"}}), ("s", 3.0, {"ok": 3})]
    changes = Changes(records=records)
    changes.module_state["m"] = {"bad": {1, 2}}
    box.commit(changes)
    assert [r.data for r in box.unsent()] == [{"ok": 1}, {"ok": 3}]
    assert box.counters()["dropped"] == {"not_serialisable": 1}
    (kept,) = box.quarantined()
    assert kept["module"] == "s" and "not serialisable" in kept["error"]
    assert "tags" in kept["data"]["repr"]
    assert box.module_states() == {}
    box.close()

"""The whole path through real parts: Mosquitto, the agent as a process, the SQLite outbox."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from agent.outbox import Outbox
from tests.conftest import AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration


def readings(n: int, sensors: int = 5, start: float = 1_700_000_000.0, step: float = 0.01):
    return [(f"t{i % sensors}", start + i * step, 20.0 + (i % 17) * 0.5) for i in range(n)]


def outbox_rows(tmp_path: Path) -> list[tuple[int, str, dict]]:
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        return [(r.seq, r.stream, r.data) for r in box.unsent()]
    finally:
        box.close()


def test_readings_flow_through_window_into_the_outbox(tmp_path, broker: Broker, agents):
    agent = AgentProcess(agent_config(tmp_path, broker.url)).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    sent = publisher.readings(readings(3000))
    publisher.close()
    time.sleep(0.5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0

    rows = outbox_rows(tmp_path)
    seqs = [seq for seq, _, _ in rows]
    assert sum(data["count"] for _, _, data in rows) == sent
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
    assert {stream for _, stream, _ in rows} == {"win"}
    assert {data["sensor"] for _, _, data in rows} == {f"t{i}" for i in range(5)}


def test_sigkill_mid_stream_keeps_committed_rows_and_seq_grows(tmp_path, broker: Broker, agents):
    config = agent_config(tmp_path, broker.url)
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings(readings(4000, step=0.05))
    time.sleep(1.0)  # several commits have happened
    agent.signal(signal.SIGKILL)
    agent.wait(10)

    db = tmp_path / "data" / "outbox.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = outbox_rows(tmp_path)
    assert before, "nothing was committed before the kill"

    again = AgentProcess(config).start()
    agents.append(again)
    publisher.readings(readings(500, start=1_750_000_000.0))
    publisher.close()
    time.sleep(0.5)
    again.signal(signal.SIGTERM)
    assert again.wait(10) == 0

    after = outbox_rows(tmp_path)
    assert after[: len(before)] == before  # every committed row is still there, unchanged
    new_seqs = [seq for seq, _, _ in after[len(before):]]
    assert new_seqs and min(new_seqs) > max(seq for seq, _, _ in before)
    assert sum(data["count"] for _, _, data in after[len(before):]) >= 500


def test_sigterm_under_load_flushes_open_windows_and_exits_zero(tmp_path, broker: Broker, agents):
    agent = AgentProcess(agent_config(tmp_path, broker.url, modules="""
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "1h"
        """)).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings(readings(5000, step=0.001))
    accepted_line = "accepted"
    agent.signal(signal.SIGTERM)
    started = time.monotonic()
    assert agent.wait(10) == 0
    assert time.monotonic() - started < 10
    publisher.close()

    from agent.health.status import read_status

    status = read_status(tmp_path / "data")
    accepted = status["sources"]["local"][accepted_line]
    rows = outbox_rows(tmp_path)
    assert accepted > 0
    assert sum(data["count"] for _, _, data in rows) == accepted  # the 1 h windows were flushed


def test_bad_payloads_are_counted_by_reason_and_the_source_keeps_going(tmp_path, broker: Broker, agents):
    agent = AgentProcess(agent_config(tmp_path, broker.url)).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    bad = {
        "not json": "not_json",
        '{"unit": "C"}': "no_value",
        '{"value": "hot"}': "value_not_a_number",
        '"a string"': "not_an_object",
        '{"value": 1, "ts": "yesterday"}': "bad_ts",
        "NaN": "not_json",
        '{"value": 1e999}': "not_json",
    }
    for payload in bad:
        publisher.publish("sensors/bad", payload).wait_for_publish(5)
    publisher.publish("sensors/big", b"\x00garbage" * 131072).wait_for_publish(5)  # 1 MiB
    sent = publisher.readings(readings(100))
    publisher.close()
    time.sleep(0.5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0

    from agent.health.status import read_status

    status = read_status(tmp_path / "data")
    expected: dict[str, int] = {}
    for reason in bad.values():
        expected[reason] = expected.get(reason, 0) + 1
    expected["oversized"] = 1
    assert status["dropped"] == expected
    assert sum(data["count"] for _, _, data in outbox_rows(tmp_path)) == sent
    log = agent.output()
    assert "sensors/bad" in log and "not_json" in log and "oversized" in log


def test_a_module_that_raises_is_quarantined_counted_and_the_daemon_continues(tmp_path, broker, agents):
    plugin = tmp_path / "fragile.py"
    plugin.write_text(
        "from agent import Module\n"
        "class Fragile(Module):\n"
        "    def process(self, record):\n"
        "        if record.data['value'] < 0:\n"
        "            raise ValueError('negative reading')\n"
        "        self.context.emit({'ok': record.data['value']})\n"
    )
    agent = AgentProcess(agent_config(tmp_path, broker.url, modules=f"""
        [[modules]]
        name = "fragile"
        use = "{plugin}:Fragile"
        inputs = ["sensors/#"]
        sync = true
        """)).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings([("t1", 1_700_000_000 + i, -1.0 if i % 10 == 0 else 1.0) for i in range(50)])
    publisher.close()
    time.sleep(0.5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0

    from agent.health.status import read_status

    status = read_status(tmp_path / "data")
    module = status["modules"]["fragile"]
    assert module["errors"] == 5 and module["quarantined"] == 5 and module["processed"] == 50
    assert "negative reading" in module["last_error"]
    assert status["quarantined"] == 5
    assert len(outbox_rows(tmp_path)) == 45
    assert "module 'fragile' raised in process" in agent.output()


def test_repeated_sigkills_at_random_points_never_corrupt_or_reuse(tmp_path, broker: Broker, agents):
    import random
    import threading

    config = agent_config(tmp_path, broker.url)
    rng = random.Random(7)
    stop = threading.Event()

    def feed() -> None:
        publisher = Publisher(broker.port, client_id="feeder")
        i = 0
        while not stop.is_set():
            publisher.readings([(f"t{j % 3}", 1_700_000_000 + (i + j) * 0.02, 1.0) for j in range(200)])
            i += 200
        publisher.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    seen: list[tuple[int, str, dict]] = []
    try:
        for _ in range(6):
            agent = AgentProcess(config).start()
            agents.append(agent)
            time.sleep(rng.uniform(0.3, 1.5))
            agent.signal(signal.SIGKILL)
            agent.wait(10)
            with sqlite3.connect(tmp_path / "data" / "outbox.db") as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = outbox_rows(tmp_path)
            assert rows[: len(seen)] == seen  # nothing committed before is gone or changed
            seqs = [seq for seq, _, _ in rows]
            assert seqs == sorted(set(seqs))
            seen = rows
    finally:
        stop.set()
        feeder.join(30)
    assert len(seen) > 0

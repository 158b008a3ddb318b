"""The second edition of the module API through the real daemon (Mosquitto, ``edge-agent run``,
the SQLite outbox): a module doing blocking I/O beside ``window``, SIGTERM while a module is
mid-I/O, a producer, and outputs routed and synced on their own. The harness runs the same
modules in tests/test_module_io.py."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.health.status import read_status
from agent.outbox import Outbox
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration

MODULES = Path(__file__).parent / "parity" / "io_modules.py"

WINDOW = """
[[modules]]
name = "win"
use = "window"
inputs = ["sensors/#"]
[modules.with]
every = "1s"
timeout = "0.5s"
stats = ["count"]

[[modules]]
name = "stamp"
use = "{modules}:Stamp"
inputs = ["win"]
sync = true
"""

SLOW = """
[[modules]]
name = "slow"
use = "{modules}:SlowLookup"
inputs = ["sensors/#"]
sync = true
[modules.with]
delay = {delay}
"""


def rows(data_dir: Path) -> list[tuple[str, float, dict[str, Any]]]:
    box = Outbox.open_readonly(data_dir)
    try:
        return [(r.stream, r.ts, r.data) for r in box.unsent()]
    finally:
        box.close()


def live_readings(broker: Broker, seconds: float, rate: float) -> int:
    """Readings of one sensor stamped with the time they are sent, at ``rate`` a second."""
    publisher = Publisher(broker.port)
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        publisher.readings([("t1", time.time(), float(sent))])
        sent += 1
        time.sleep(max(0.0, started + sent / rate - time.monotonic()))
    publisher.close()
    return sent


def run_window(tmp_path: Path, broker: Broker, agents: list[AgentProcess], extra: str) -> dict[str, Any]:
    tmp_path.mkdir()
    config = agent_config(tmp_path, broker.url, modules=WINDOW.format(modules=MODULES) + extra)
    agent = AgentProcess(config).start()
    agents.append(agent)
    sent = live_readings(broker, seconds=5.0, rate=20)
    time.sleep(2.0)  # the last window closes by timeout
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.output()
    stamped = sorted((data for stream, _, data in rows(tmp_path / "data") if stream == "stamp"),
                     key=lambda data: data["end"])
    # each window but the last is closed by the first reading past its end; the last closes by
    # timeout, at a moment set by the tick schedule rather than by how busy the agent is
    delays = [data["at"] - data["end"] for data in stamped[:-1]]
    return {"sent": sent, "delays": delays, "status": read_status(tmp_path / "data"),
            "rows": rows(tmp_path / "data"), "output": agent.output()}


def p99(values: list[float]) -> float:
    """Nearest rank: with a handful of summaries, the latest of them."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def test_a_module_blocking_on_io_does_not_hold_up_window(tmp_path, broker: Broker, agents) -> None:
    alone = run_window(tmp_path / "alone", broker, agents, "")
    beside = run_window(tmp_path / "beside", broker, agents, SLOW.format(modules=MODULES, delay=0.2))

    assert alone["delays"] and beside["delays"]
    assert p99(beside["delays"]) <= p99(alone["delays"]) + 0.1, (alone["delays"], beside["delays"])
    win = beside["status"]["modules"]["win"]
    assert win["processed"] == beside["sent"]  # window kept up with every reading
    slow = beside["status"]["modules"]["slow"]
    # nothing lost: each reading was looked up and synced, or quarantined and counted at stop
    looked_up = [data for stream, _, data in beside["rows"] if stream == "slow"]
    abandoned = slow["counters"].get("abandoned", 0)
    assert len(looked_up) == slow["processed"] and slow["processed"] + abandoned == beside["sent"]
    assert beside["status"]["quarantined"] == abandoned


def test_an_isolated_module_blocking_on_io_does_not_hold_up_window(
    tmp_path, broker: Broker, agents
) -> None:
    alone = run_window(tmp_path / "alone", broker, agents, "")
    slow = SLOW.format(modules=MODULES, delay=0.2).replace(
        "sync = true", 'sync = true\nisolation = "process"')
    beside = run_window(tmp_path / "beside", broker, agents, slow)

    assert alone["delays"] and beside["delays"]
    assert p99(beside["delays"]) <= p99(alone["delays"]) + 0.1, (alone["delays"], beside["delays"])
    assert beside["status"]["modules"]["win"]["processed"] == beside["sent"]
    slow_status = beside["status"]["modules"]["slow"]
    counters = slow_status["counters"]
    assert not counters.get("hangs") and not counters.get("crashes"), counters  # slow, not hung
    looked_up = [data for stream, _, data in beside["rows"] if stream == "slow"]
    abandoned = counters.get("abandoned", 0)
    assert len(looked_up) == slow_status["processed"]
    assert slow_status["processed"] + abandoned == beside["sent"], (slow_status, counters, beside["output"])
    assert beside["status"]["quarantined"] == abandoned


def test_sigterm_mid_io_exits_in_time_and_accounts_for_every_record(
    tmp_path, broker: Broker, agents
) -> None:
    config = agent_config(tmp_path, broker.url, modules=SLOW.format(modules=MODULES, delay=2.0))
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings([("t1", time.time(), float(i)) for i in range(6)])
    publisher.close()
    # the first lookup is under way: status shows the records the module has taken, unfinished
    deadline = time.monotonic() + 5
    while _in_flight(tmp_path / "data") < 1:
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.1)
    text = subprocess.run([*EDGE_AGENT, "status", "-c", str(config)], capture_output=True,
                          text=True, timeout=60).stdout
    assert "module      slow [" in text and "in flight " in text, text
    started = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.output()
    assert time.monotonic() - started < 10

    status = read_status(tmp_path / "data")
    slow = status["modules"]["slow"]
    abandoned = slow["counters"].get("abandoned", 0)
    assert slow["processed"] >= 1 and abandoned >= 1
    assert slow["processed"] + abandoned == 6
    assert len(rows(tmp_path / "data")) == slow["processed"]
    assert status["quarantined"] == abandoned
    assert "abandoned" in agent.output()
    text = subprocess.run([*EDGE_AGENT, "status", "-c", str(config)], capture_output=True,
                          text=True, timeout=60).stdout
    assert "module      slow [" in text and f"abandoned {abandoned}" in text  # a module's own counts


def _in_flight(data_dir: Path) -> int:
    try:
        return int(read_status(data_dir)["modules"]["slow"].get("in_flight", 0))
    except Exception:  # not written yet
        return 0


def test_a_producer_runs_on_its_timer(tmp_path, broker: Broker, agents) -> None:
    config = agent_config(tmp_path, broker.url, modules=f"""
        [[modules]]
        name = "poller"
        use = "{MODULES}:Poller"
        inputs = []
        sync = true
        """)
    agent = AgentProcess(config).start()
    agents.append(agent)
    time.sleep(2.2)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.output()
    polls = [data["poll"] for stream, _, data in rows(tmp_path / "data") if stream == "poller"]
    assert len(polls) >= 3 and polls == list(range(1, len(polls) + 1))


def test_outputs_are_routed_and_synced_on_their_own(tmp_path, broker: Broker, agents) -> None:
    config = agent_config(tmp_path, broker.url, modules=f"""
        [[modules]]
        name = "split"
        use = "{MODULES}:Splitter"
        inputs = ["sensors/#"]
        sync = ["alerts"]

        [[modules]]
        name = "count"
        use = "{MODULES}:Counter"
        inputs = ["split.alerts"]
        sync = true
        """)
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings([("t1", time.time() + i * 0.01, v) for i, v in enumerate([5.0, 12.0, 3.0, 20.0])])
    publisher.close()
    time.sleep(1.0)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.output()

    synced = rows(tmp_path / "data")
    assert {stream for stream, _, _ in synced} == {"split.alerts", "count"}  # not "split"
    assert [data["high"] for stream, _, data in synced if stream == "split.alerts"] == [12.0, 20.0]
    assert [data["from"] for stream, _, data in synced if stream == "count"] == ["split.alerts"] * 2
    assert read_status(tmp_path / "data")["modules"]["split"]["emitted"] == 6


def test_named_inputs_and_join_through_the_daemon(tmp_path, broker: Broker, agents) -> None:
    examples = Path(__file__).resolve().parent.parent / "docs" / "modules" / "examples"
    config = agent_config(tmp_path, broker.url, modules=f"""
        [[modules]]
        name = "climate"
        use = "join"
        inputs = {{ temp = "sensors/+/temp", hum = "sensors/+/hum" }}
        [modules.with]
        by_level = 1
        max_skew = "1m"

        [[modules]]
        name = "dew_point"
        use = "{examples}/dewpoint.py:DewPoint"
        inputs = ["climate"]
        sync = true
        """)
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    now = time.time()
    for topic, ts, value in [("sensors/kitchen/temp", now, 20.0), ("sensors/hall/hum", now, 40.0),
                             ("sensors/kitchen/hum", now + 1, 50.0)]:
        publisher.publish(topic, json.dumps({"value": value, "ts": ts})).wait_for_publish(10)
    publisher.close()
    time.sleep(1.0)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.output()
    assert [(stream, ts, data) for stream, ts, data in rows(tmp_path / "data")] == [
        ("dew_point", now + 1, {"sensor": "kitchen", "value": 9.26, "unit": "C"})
    ]


def test_a_module_blocking_the_loop_cannot_hold_the_shutdown(tmp_path, broker: Broker, agents) -> None:
    config = agent_config(tmp_path, broker.url, modules=f"""
        [[modules]]
        name = "blocking"
        use = "{MODULES}:Blocking"
        inputs = ["sensors/#"]
        sync = true

        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "1h"
        stats = ["count"]
        """)
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings([("t1", time.time(), float(i)) for i in range(20)])
    publisher.close()
    time.sleep(1.5)
    started = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.output()
    assert time.monotonic() - started < 10

    status = read_status(tmp_path / "data")
    blocking = status["modules"]["blocking"]
    abandoned = blocking["counters"].get("abandoned", 0)
    assert abandoned > 0 and blocking["processed"] + abandoned == 20  # abandoned, counted
    synced = rows(tmp_path / "data")
    assert sum(data["count"] for stream, _, data in synced if stream == "win") == 20  # the rest flushed
    assert len([1 for stream, _, _ in synced if stream == "blocking"]) == blocking["processed"]


def test_an_async_module_killed_while_it_awaits_loses_no_reading_and_doubles_none(
    tmp_path, broker: Broker, agents
) -> None:
    """A checkpoint saves the records an ``async def process`` is awaiting on with the module's
    queue: SIGKILL during the await, and the restart processes them again (QoS 1: their PUBACK
    went out with that checkpoint, so the broker does not). Each reading's output once."""
    config = agent_config(tmp_path, broker.url, modules=SLOW.format(modules=MODULES, delay=0.3))
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings([("t1", time.time(), float(i)) for i in range(20)])
    publisher.close()
    for _ in range(3):  # 6 s of lookups: each kill lands in one of them
        time.sleep(1.1)
        agent.signal(signal.SIGKILL)
        agent.wait(10)
        agent.start()

    def values() -> list[float]:
        return sorted(data["value"] for stream, _, data in rows(tmp_path / "data") if stream == "slow")

    deadline = time.monotonic() + 30
    while len(values()) < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    assert values() == [float(i) for i in range(20)]

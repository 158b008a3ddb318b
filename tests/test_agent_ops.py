"""Operator-facing behaviour of the running agent: reload, status, outbox, backpressure."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from agent.health.status import read_status
from tests.conftest import AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True)


def test_sighup_refuses_a_bad_config_and_applies_a_good_one(tmp_path, broker: Broker, agents):
    config = agent_config(tmp_path, broker.url)
    good = config.read_text()
    agent = AgentProcess(config).start()
    agents.append(agent)

    config.write_text(good.replace('every = "1s"', 'every = "whenever"'))
    agent.signal(signal.SIGHUP)
    agent.wait_for_log("the new config is refused")
    assert "modules[0](win).with.every" in agent.output()

    config.write_text(good.replace('name = "win"', 'name = "win2"'))
    agent.signal(signal.SIGHUP)
    agent.wait_for_log("reloaded")
    publisher = Publisher(broker.port)
    sent = publisher.readings([("t1", 1_700_000_000 + i * 0.1, 1.0) for i in range(100)])
    publisher.close()
    time.sleep(0.5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    status = read_status(tmp_path / "data")
    assert status["modules"]["win2"]["processed"] == sent


def test_status_and_outbox_commands_while_running_and_after(tmp_path, broker: Broker, agents):
    config = agent_config(tmp_path, broker.url)
    assert cli("status", "-c", str(config)).returncode == 1  # no outbox yet: says so
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings([(f"t{i % 3}", 1_700_000_000 + i * 0.01, float(i)) for i in range(600)])
    publisher.publish("sensors/x", "garbage").wait_for_publish(5)
    publisher.close()
    time.sleep(2.5)  # a health report is written every 2 s

    running = json.loads(cli("status", "-c", str(config), "--json").stdout)
    assert running["daemon"]["running"] is True
    assert running["device_id"] == "test-gw"
    assert running["dropped"] == {"not_json": 1}
    assert running["modules"]["win"]["status"] == "running"
    assert running["backlog"]["rows"] > 0 and running["last_sync"] is None

    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    stopped = json.loads(cli("status", "-c", str(config), "--json").stdout)
    assert stopped["daemon"]["running"] is False
    text = cli("status", "-c", str(config)).stdout
    assert "not running (last report 20" in text and "not_json 1" in text
    assert "last sync   no [cloud] configured: records stay in the outbox, which may grow to 500 MB" in text
    assert "module      win [stopped when the daemon last ran]" in text or (
        "module      win [running when the daemon last ran]" in text)
    assert f"data        {config.parent / 'data'}" in text

    lines = cli("outbox", "-c", str(config), "--limit", "4").stdout.splitlines()
    assert len(lines) == 4
    first = json.loads(lines[0])
    assert set(first) == {"seq", "stream", "ts", "data", "time"} and first["seq"] == 1
    assert first["time"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first["ts"])) + (
        f".{int(first['ts'] % 1 * 1000):03d}Z")
    everything = [json.loads(line) for line in cli("outbox", "-c", str(config)).stdout.splitlines()]
    assert sum(record["data"]["count"] for record in everything) == 600
    assert len(everything) == stopped["backlog"]["rows"]


def test_a_slow_module_pauses_the_source_and_loses_nothing(tmp_path, broker: Broker, agents):
    plugin = tmp_path / "slow.py"
    plugin.write_text(
        "import time\n"
        "from agent import Module\n"
        "class Slow(Module):\n"
        "    def process(self, record):\n"
        "        time.sleep(0.0005)\n"
        "        self.context.emit({'v': record.data['value']}, ts=record.ts)\n"
    )
    agent = AgentProcess(agent_config(tmp_path, broker.url, modules=f"""
        [[modules]]
        name = "slow"
        use = "{plugin}:Slow"
        inputs = ["sensors/#"]
        sync = true
        queue = 200
        """)).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    sent = publisher.readings([("t1", 1_700_000_000 + i, float(i)) for i in range(3000)])
    publisher.close()
    deadline = time.monotonic() + 30
    deepest = 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        module = read_status(tmp_path / "data")["modules"].get("slow", {})
        deepest = max(deepest, module.get("queue", 0))
        if module.get("processed", 0) >= sent:
            break
    # bounded: the queue's 200 plus at most one socket read (asyncio reads up to 256 KiB, and a
    # reading here is at least 40 bytes on the wire)
    assert deepest <= 200 + 256 * 1024 // 40
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    status = read_status(tmp_path / "data")
    assert status["sources"]["local"]["paused"] > 0  # the source waited for the module
    assert status["sources"]["local"]["accepted"] == sent
    assert status["backlog"]["rows"] == sent  # nothing dropped on the way, nothing twice


def test_module_state_survives_a_restart_of_the_agent(tmp_path, broker: Broker, agents):
    plugin = tmp_path / "numbered.py"
    plugin.write_text(
        "from agent import Module\n"
        "class Numbered(Module):\n"
        "    def process(self, record):\n"
        "        n = self.context.state.get('n', 0) + 1\n"
        "        self.context.state['n'] = n\n"
        "        self.context.emit({'n': n}, ts=record.ts)\n"
    )
    config = agent_config(tmp_path, broker.url, modules=f"""
        [[modules]]
        name = "numbered"
        use = "{plugin}:Numbered"
        inputs = ["sensors/#"]
        sync = true
        """)
    for run in range(2):
        agent = AgentProcess(config).start()
        agents.append(agent)
        publisher = Publisher(broker.port)
        publisher.readings([("t1", 1_700_000_000 + run * 100 + i, 1.0) for i in range(10)])
        publisher.close()
        time.sleep(0.5)
        agent.signal(signal.SIGTERM)
        assert agent.wait(10) == 0
    numbers = [json.loads(line)["data"]["n"] for line in cli("outbox", "-c", str(config)).stdout.splitlines()]
    assert numbers == list(range(1, 21))


HOURLY = """
[[modules]]
name = "hourly"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "1h"
"""


def test_reload_keeps_what_did_not_change_and_rolls_back_a_module_that_cannot_start(
    tmp_path, broker: Broker, agents
):
    plugin = tmp_path / "broken.py"
    plugin.write_text(
        "from agent import Module\n"
        "class Broken(Module):\n"
        "    async def start(self):\n"
        "        raise RuntimeError('no such device /dev/ttyUSB9')\n"
        "    def process(self, record):\n"
        "        pass\n"
    )
    second = """
        [[modules]]
        name = "second"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "{every}"
        """
    config = agent_config(tmp_path, broker.url, modules=HOURLY + second.format(every="1h"))
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings([("t1", 1_700_000_000 + i, 1.0) for i in range(50)])
    time.sleep(0.5)

    agent_config(tmp_path, broker.url, modules=HOURLY + second.format(every="30m"))  # rewrites the file
    agent.signal(signal.SIGHUP)
    agent.wait_for_log("reloaded:")
    assert "restarted second" in agent.output() and "kept" in agent.output() and "hourly" in agent.output()

    broken = f'\n[[modules]]\nname = "broken"\nuse = "{plugin}:Broken"\ninputs = ["sensors/#"]\n'
    config.write_text(config.read_text() + broken)
    agent.signal(signal.SIGHUP)
    agent.wait_for_log("back to the running config")
    publisher.readings([("t1", 1_700_000_100 + i, 1.0) for i in range(50)])
    publisher.close()
    time.sleep(0.5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0

    rows = [json.loads(line) for line in cli("outbox", "-c", str(config)).stdout.splitlines()]
    hourly = [row["data"]["count"] for row in rows if row["stream"] == "hourly"]
    assert hourly == [100]  # one window, never flushed early: it kept running across both reloads
    second_counts = [row["data"]["count"] for row in rows if row["stream"] == "second"]
    assert sum(second_counts) == 100 and len(second_counts) == 2  # flushed at its restart, then again
    status = read_status(tmp_path / "data")
    assert "broken" not in status["modules"] or status["modules"]["broken"]["status"] != "running"

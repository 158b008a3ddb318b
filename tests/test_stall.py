"""A module that stalls the event loop (2 s on every 100th record) beside ``window``: the stall
is reported and counted, and no reading is counted late because the agent itself was slow."""

from __future__ import annotations

import signal
import time

import pytest

from agent.health.status import read_status
from agent.outbox import Outbox
from tests.conftest import AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration


def test_a_stalling_module_beside_window_makes_nothing_late(tmp_path, broker: Broker, agents):
    plugin = tmp_path / "stalling.py"
    plugin.write_text(
        "import time\n"
        "from agent import Module\n"
        "class Stalling(Module):\n"
        "    seen = 0\n"
        "    def process(self, record):\n"
        "        self.seen += 1\n"
        "        if self.seen % 100 == 0:\n"
        "            time.sleep(2)  # a blocking read, say\n"
    )
    config = agent_config(tmp_path, broker.url, extra='[supervisor]\nhang_timeout = "1s"\n', modules=f"""
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "1s"
        timeout = "1s"
        stats = ["count"]

        [[modules]]
        name = "stalling"
        use = "{plugin}:Stalling"
        inputs = ["sensors/#"]
        """)
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    sent = 0
    started = time.time()
    for tick in range(100):  # 10 s of 4 sensors at 10 readings/s each, stamped as they are taken
        now = time.time()
        sent += publisher.readings([(f"t{k}", now, float(tick)) for k in range(4)])
        time.sleep(max(0.0, started + (tick + 1) * 0.1 - time.time()))
    publisher.close()
    time.sleep(4)
    status = read_status(tmp_path / "data")
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0

    box = Outbox.open_readonly(tmp_path / "data")
    try:
        counted = sum(record.data["count"] for record in box.unsent())
        counters = box.counters()
    finally:
        box.close()
    window = counters["module:win"]
    assert window.get("late", 0) == 0, window
    assert counted == sent
    assert window.get("stalls_seen", 0) >= 1  # the window saw the loop held, and waited it out
    assert "held the event loop" in agent.output() or "was held for" in agent.output()
    assert status["modules"]["stalling"]["processed"] > 0

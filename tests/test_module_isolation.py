"""Modules with ``isolation = "process"`` through the real daemon (Mosquitto, ``edge-agent
run``, the SQLite outbox): one that aborts the interpreter, one that leaks past ``max_rss``
and one that hangs, each beside an in-process ``window``. Each is killed, counted and
restarted; the records it had are retried once, one by one, so that only the culprit is
quarantined; ``window`` carries on; every reading is passed on or quarantined, none lost."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.health.status import read_status
from agent.outbox import Outbox
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration

MODULES = Path(__file__).parent / "parity" / "isolation_modules.py"

CONFIG = """
[[modules]]
name = "win"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "1s"
stats = ["count"]

[[modules]]
name = "bad"
use = "{modules}:{cls}"
inputs = ["sensors/#"]
sync = true
isolation = "process"
{extra}
"""

SENT = 300
TRIGGERS = (60, 180)  # the readings that set the module off


def run(tmp_path: Path, broker: Broker, agents: list[AgentProcess], cls: str, kind: str,
        extra: str = "", stop_when: Callable[[Path, AgentProcess], bool] | None = None) -> dict:
    config = agent_config(
        tmp_path, broker.url, modules=CONFIG.format(modules=MODULES, cls=cls, extra=extra),
        extra="[supervisor]\nhang_timeout = \"1s\"",
    )
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    start = time.time() - SENT * 0.01
    for index in range(SENT):
        value = 13.0 if index in TRIGGERS else float(index % 7)
        publisher.readings([("t1", start + index * 0.01, value)])
        time.sleep(0.01)
    publisher.close()
    # each trigger ends two children (its batch, then itself alone), each restarted with backoff:
    # wait until the last restart is counted and every reading is accounted for, not for a time
    # (a loaded machine is slow to leak 200 MB; stopped earlier, the backlog is abandoned)
    deadline = time.monotonic() + 60
    while not (stop_when(tmp_path, agent) if stop_when else _settled(tmp_path, kind)):
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.25)
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0, agent.output()
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        rows = [(r.stream, r.data) for r in box.unsent()]
    finally:
        box.close()
    text = subprocess.run([*EDGE_AGENT, "status", "-c", str(config)], capture_output=True,
                          text=True, timeout=60).stdout
    return {"status": read_status(tmp_path / "data"), "rows": rows, "text": text,
            "output": agent.output()}


def _settled(tmp_path: Path, kind: str) -> bool:
    counters = read_status(tmp_path / "data").get("modules", {}).get("bad", {}).get("counters", {})
    if min(counters.get(kind, 0), counters.get("restarts", 0)) < 2 * len(TRIGGERS):
        return False
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        passed = sum(1 for record in box.unsent() if record.stream == "bad")
    finally:
        box.close()
    return passed + counters.get("quarantined", 0) >= SENT


def check(result: dict, kind: str) -> None:
    status = result["status"]
    win, bad = status["modules"]["win"], status["modules"]["bad"]
    assert win["processed"] == SENT, win  # window went on, every reading seen
    counted = sum(data["count"] for stream, data in result["rows"] if stream == "win")
    assert counted == SENT
    counters = bad["counters"]
    # the batch a child died with is retried once, a record a request: the trigger ends a
    # second child on its own and only it is quarantined
    assert counters.get(kind, 0) == 2 * len(TRIGGERS), counters
    assert counters.get("restarts", 0) == 2 * len(TRIGGERS), counters
    assert counters.get("retried", 0) >= len(TRIGGERS), counters
    # nothing lost silently: each reading was passed on, or quarantined with the reason
    passed = sum(1 for stream, _ in result["rows"] if stream == "bad")
    quarantined = counters.get("quarantined", 0)
    assert passed + quarantined == SENT and quarantined == len(TRIGGERS), (passed, quarantined)
    assert status["quarantined"] == quarantined
    assert f"{kind} {2 * len(TRIGGERS)}" in result["text"], result["text"]


def test_a_module_that_aborts_is_restarted(tmp_path, broker: Broker, agents) -> None:
    check(run(tmp_path, broker, agents, "Crasher", "crashes"), "crashes")


def test_a_module_that_leaks_past_max_rss_is_restarted(tmp_path, broker: Broker, agents) -> None:
    check(run(tmp_path, broker, agents, "Leaker", "rss_kills", 'max_rss = "200MB"'), "rss_kills")


def test_a_stop_while_the_child_waits_out_its_backoff_finishes_the_queue(
    tmp_path, broker: Broker, agents
) -> None:
    """SIGTERM half a second after the third restart: the third child soon dies on the second
    trigger, and the fourth would start only 4 s later. One last child, bounded by the stop
    budget, takes what is queued instead of abandoning it."""

    def third_restart(_: Path, agent: AgentProcess) -> bool:
        if agent.output().count("restarting the module's process after") < 3:
            return False
        time.sleep(0.5)
        return True

    result = run(tmp_path, broker, agents, "Crasher", "crashes", stop_when=third_restart)
    counters = result["status"]["modules"]["bad"]["counters"]
    passed = sum(1 for stream, _ in result["rows"] if stream == "bad")
    assert counters.get("abandoned", 0) == 0, counters
    assert passed + counters.get("quarantined", 0) == SENT, (passed, counters)
    assert "to finish its queue at stop" in result["output"]


def test_a_module_that_hangs_is_restarted(tmp_path, broker: Broker, agents) -> None:
    check(run(tmp_path, broker, agents, "Hanger", "hangs"), "hangs")


def test_the_guides_isolation_example_runs_in_a_process_of_its_own(
    tmp_path, broker: Broker, agents
) -> None:
    """docs/modules.md's Isolation chapter, its config as written: the lookup of "Doing I/O" in a
    child process, each reading passed on with its site."""
    root = Path(__file__).resolve().parent.parent
    guide = (root / "docs" / "modules.md").read_text()
    chapter = guide[guide.index("## 13. Isolation"):]
    (block,) = re.findall(r"```toml\n(.*?)```", chapter, flags=re.S)
    examples = root / "docs" / "modules" / "examples"
    config = agent_config(tmp_path, broker.url,
                          modules=block.replace("docs/modules/examples/", f"{examples}/"))
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    now = time.time()
    publisher.readings([("t1", now, 20.5), ("t2", now + 1, 21.0), ("t1", now + 2, 21.5)])
    publisher.close()

    def synced() -> list[tuple[str, dict]]:
        box = Outbox.open_readonly(tmp_path / "data")
        try:
            return [(r.stream, r.data) for r in box.unsent()]
        finally:
            box.close()

    deadline = time.monotonic() + 20
    while len(synced()) < 3:
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.2)
    status = read_status(tmp_path / "data")["modules"]["lookup"]
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0, agent.output()
    assert synced() == [("lookup", {"sensor": s, "value": v, "site": f"site-{s}"})
                        for s, v in (("t1", 20.5), ("t2", 21.0), ("t1", 21.5))]
    assert status["isolation"] == "process" and status["pid"], status

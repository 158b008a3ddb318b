"""A full disk under a running agent: commits fail, are counted, and nothing accepted is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import Outbox
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path):
    mountpoint = tmp_path / "data"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """A file that takes all the free space of ``directory``'s file system but ``leave`` bytes."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        try:
            while free_bytes(directory) - 65536 >= leave:
                out.write(b"\0" * 65536)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            pass
    return filler


def free_bytes(directory: Path) -> int:
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


NO_MARGIN = "[buffer]\nmin_free = 0\n"
"""The file system filled by another writer with no margin kept: commits fail and are retried."""


def test_commits_fail_while_the_disk_is_full_and_succeed_after(tmp_path, small_disk, broker: Broker, agents):
    agent = AgentProcess(agent_config(tmp_path, broker.url, extra=NO_MARGIN)).start()
    agents.append(agent)
    filler = fill(small_disk)
    publisher = Publisher(broker.port)
    sent = publisher.readings([(f"t{i % 4}", 1_700_000_000 + i * 0.05, float(i)) for i in range(2000)])
    agent.wait_for_log("cannot commit", timeout=15)
    assert agent.process is not None and agent.process.poll() is None  # still running

    filler.unlink()
    time.sleep(1.0)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    publisher.close()

    box = Outbox.open_readonly(small_disk)
    try:
        total = sum(record.data["count"] for record in box.unsent())
        errors = box.counters()["outbox"]["commit_errors"]
    finally:
        box.close()
    assert total == sent
    assert errors >= 1
    assert "database or disk is full" in agent.output()


def test_disk_full_with_sync_running_no_task_dies_status_says_so_and_nothing_is_lost(
    tmp_path, small_disk, broker: Broker, cloud_broker: Broker, agents, ingests
):
    from tests.conftest import IngestProcess
    from tests.sync_helpers import assert_exactly_once, cloud_section, sync_once, wait_for

    ingest = IngestProcess(tmp_path, cloud_broker.url, f"sqlite:///{tmp_path}/cloud.db").start(timeout=60)
    ingests.append(ingest)
    config = agent_config(tmp_path, broker.url, extra=NO_MARGIN + cloud_section(cloud_broker.url))
    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    sent = publisher.readings([(f"t{i % 4}", 1_700_000_000 + i * 0.05, float(i)) for i in range(1000)])
    filler = fill(small_disk)
    sent += publisher.readings([(f"t{i % 4}", 1_700_000_050 + i * 0.05, float(i)) for i in range(2000)])
    agent.wait_for_log("cannot commit", timeout=20)

    def shown() -> bool:
        out = subprocess.run([*EDGE_AGENT, "status", "-c", str(config)], capture_output=True, text=True)
        return "disk full since" in out.stdout and "records held in memory" in out.stdout

    wait_for(shown, 15, "status showing the full disk")
    filler.unlink()  # space comes back: no restart, the agent recovers by itself
    agent.wait_for_log("committing again", timeout=30)
    sent += publisher.readings([(f"t{i % 4}", 1_700_000_200 + i * 0.05, float(i)) for i in range(500)])
    publisher.close()
    time.sleep(2)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    assert "Traceback" not in agent.output()
    assert sync_once(config).returncode == 0
    assert_exactly_once(ingest, sent)


PASS_THROUGH = """
[[modules]]
name = "pass"
use = "transform"
inputs = ["sensors/#"]
sync = true
[modules.with]
where = "true"
"""


def test_below_min_free_new_records_are_refused_and_counted_before_the_disk_fills_and_taken_again_after(
    tmp_path, small_disk, broker: Broker, agents
):
    """The agent's own records fill the disk: at buffer.min_free it refuses the newest (one
    record a reading here, so each is counted), no commit ever fails, status says so, and once
    space returns it takes records again without a restart."""
    from tests.sync_helpers import wait_for

    config = agent_config(
        tmp_path, broker.url, modules=PASS_THROUGH,
        extra='[buffer]\nmin_free = "1MB"\nmax_bytes = "3MB"\ncommit_records = 500\n',
    )
    agent = AgentProcess(config).start()
    agents.append(agent)
    filler = fill(small_disk, leave=1_800_000)  # 1.8 MB left, 1 MB of it the margin
    publisher = Publisher(broker.port)
    sent = 0
    for burst in range(2):  # ~0.5 MB of records a burst: the margin is reached in the second
        sent += publisher.readings(
            [(f"t{i % 4}", 1_700_000_000 + burst * 1000 + i * 0.05, float(i)) for i in range(8000)]
        )
    wait_for(lambda: _stored(config) == sent, 60, "every reading stored or refused")
    status = _status(config)
    refused = status["dropped"].get("disk_low", 0)
    assert refused > 0 and status["backlog"]["rows"] + refused == sent
    assert status["outbox"]["commit_errors"] == 0 and "cannot commit" not in agent.output()
    assert free_bytes(small_disk) > 500_000  # the margin kept, less a WAL's worth at most
    wait_for(lambda: "disk low since" in _status_text(config), 15, "status showing the low disk")

    filler.unlink()  # space comes back: no restart
    rows = _status(config)["backlog"]["rows"]
    more = publisher.readings([(f"t{i % 4}", 1_700_010_000 + i * 0.05, float(i)) for i in range(2000)])
    publisher.close()
    wait_for(lambda: _status(config)["backlog"]["rows"] == rows + more, 30, "the new readings taken")
    assert _status(config)["dropped"].get("disk_low", 0) == refused
    wait_for(lambda: "disk low" not in _status_text(config), 15, "status without the low disk")
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    assert "disk_low" in agent.output() and "free again" in agent.output()


def _status(config: Path) -> dict[str, Any]:
    out = subprocess.run([*EDGE_AGENT, "status", "-c", str(config), "--json"],
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def _status_text(config: Path) -> str:
    return subprocess.run([*EDGE_AGENT, "status", "-c", str(config)], capture_output=True, text=True).stdout


def _stored(config: Path) -> int:
    status = _status(config)
    return int(status["backlog"]["rows"] + status["dropped"].get("disk_low", 0))

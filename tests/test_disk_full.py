"""A full disk under a running agent: commits fail, are counted, and nothing accepted is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

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


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            pass
    return filler


def test_commits_fail_while_the_disk_is_full_and_succeed_after(tmp_path, small_disk, broker: Broker, agents):
    agent = AgentProcess(agent_config(tmp_path, broker.url)).start()
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
    config = agent_config(tmp_path, broker.url, extra=cloud_section(cloud_broker.url))
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

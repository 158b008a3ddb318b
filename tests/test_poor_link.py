"""A gateway on a poor link (tests/poor_link.py: 300 ms round trip, 2 % loss, 256 kbit/s each
way) drains a one-hour backlog exactly once.

The backlog is what the agent really holds after an hour offline at 100 readings/s with the
shipped config's pipeline (configs/pi.toml: a 60 s ``window`` with count, mean, min and max,
synced): 100 sensors each reading once a second for an hour of reading time, 360,000 readings,
while the cloud is not there. They come from a ``tail`` source reading a file written
beforehand, so the hour takes seconds; what the window makes of them is what it makes of the
same readings from the MQTT source (the local broker's part is the kill storm test's). Then the
cloud's broker and ``edge-cloud serve`` start behind the link and the agent drains on its own,
with the shipped sync settings."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import Outbox
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, IngestProcess, agent_config
from tests.poor_link import LinkUnavailable, PoorLink
from tests.sync_helpers import agent_accepted, assert_exactly_once, wait_for

pytestmark = pytest.mark.integration

SENSORS = 100
READINGS = 360_000  # an hour at 100 readings/s
WINDOW = """
[[modules]]
name = "win"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "60s"
stats = ["count", "mean", "min", "max"]
"""


@pytest.fixture
def link() -> Iterator[PoorLink]:
    try:
        with PoorLink() as made:
            yield made
    except LinkUnavailable as why:
        pytest.skip(f"no poor link on this machine: {why}")


def write_hour(path: Path, start: float) -> None:
    """READINGS lines ``sensor value ts``: SENSORS sensors each reading once a second from ``start``."""
    with path.open("w") as out:
        for i in range(READINGS):
            out.write(f"s{i % SENSORS} {20 + (i % 37) * 0.1:.2f} {start + i // SENSORS:.0f}\n")


def status(config: Path) -> dict[str, Any]:
    out = subprocess.run([*EDGE_AGENT, "status", "-c", str(config), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def held(data_dir: Path) -> tuple[int, int]:
    """The outbox's unsent summaries, and the readings they count."""
    box = Outbox.open_readonly(data_dir)
    try:
        rows = box.read_rows(0, 1 << 30, 1 << 40)
    finally:
        box.close()
    return len(rows), sum(json.loads(row[3])["count"] for row in rows)


@pytest.mark.timeout(420)  # about 70 s with the 2-core machine at load average 10
def test_an_hour_of_backlog_drains_exactly_once_over_a_poor_link(tmp_path: Path, link: PoorLink, agents,
                                                                 ingests) -> None:
    readings = tmp_path / "hour.log"
    write_hour(readings, time.time() - 3700)
    (tmp_path / "cloud").mkdir()
    cloud = Broker(tmp_path / "cloud")
    cloud.config.write_text(cloud.config.read_text().replace(f"listener {cloud.port} 127.0.0.1",
                                                             f"listener {cloud.port}"))
    cloud_url = f"mqtt://{link.address['cloud']}:{cloud.port}"
    source = f'''
[[sources]]
name = "hour"
type = "tail"
path = "{readings}"
format = "text"
start = "beginning"
'''
    # the shipped sync settings, but for the reconnect delay's ceiling: the cloud is away on
    # purpose while the backlog builds, and waiting up to a minute for the next try proves nothing
    config = agent_config(tmp_path, modules=source + WINDOW,
                          extra=f'\n[cloud]\nurl = "{cloud_url}"\nreconnect_max = "5s"\n')
    agent = AgentProcess(config)
    agents.append(agent)
    link.call("device", agent.start, 30.0)
    wait_for(lambda: held(tmp_path / "data")[1] == READINGS, 180, "the agent holds the hour's summaries")
    records, _ = held(tmp_path / "data")
    assert agent_accepted(config) == READINGS
    wire_before = link.wire_bytes()

    link.call("cloud", cloud.start)
    ingest = IngestProcess(tmp_path, f"mqtt://127.0.0.1:{cloud.port}", f"sqlite:///{tmp_path}/cloud.db")
    ingests.append(ingest)
    link.call("cloud", ingest.start, 60.0)
    began = time.monotonic()
    wait_for(lambda: held(tmp_path / "data")[0] == 0, 240, "the backlog drains")
    drained = time.monotonic() - began
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    cloud.stop()

    rows = link.call("cloud", assert_exactly_once, ingest, READINGS)
    assert len(rows) == records
    final = status(config)
    assert not {reason: n for reason, n in final["dropped"].items() if n}, final["dropped"]
    assert final["quarantined"] == 0
    assert final["modules"]["win"]["counters"].get("late", 0) == 0
    # the link is slow, not broken: no connection given up for dead, no batch judged poison
    sync = final["sync"]["counters"]
    assert not {k: sync.get(k) for k in ("dead_links", "batch_shrinks", "set_aside") if sync.get(k)}, sync
    print(f"\n{records} records over {link.method} in {drained:.0f} s, "
          f"{(link.wire_bytes() - wire_before) / records:.1f} bytes each on the wire; sync {sync}")

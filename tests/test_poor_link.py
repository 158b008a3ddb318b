"""A gateway on a poor link (tests/poor_link.py: 300 ms round trip, 2 % loss, 256 kbit/s each
way) drains a one-hour backlog exactly once, and messages that take seconds each on that link are
late, not lost: nothing is sent twice and the link is not given up for dead.

The backlog is what the agent really holds after an hour offline at 100 readings/s with the
shipped config's pipeline (configs/pi.toml: a 60 s ``window`` with count, mean, min and max,
synced): 100 sensors each reading once a second for an hour of reading time, 360,000 readings,
while the link is down. They come from a ``tail`` source reading a file written
beforehand, so the hour takes seconds; what the window makes of them is what it makes of the
same readings from the MQTT source (the local broker's part is the kill storm test's). Then the
link comes back, and the agent drains on its own into the cloud's broker and ``edge-cloud
serve`` behind it, with the shipped sync settings."""

from __future__ import annotations

import functools
import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import Changes, Outbox
from tests.conftest import EDGE_AGENT, AgentProcess, IngestProcess
from tests.poor_link import (
    POOR,
    READINGS,
    LinkUnavailable,
    PoorLink,
    Shape,
    cloud_broker,
    held,
    hour_config,
    write_hour,
)
from tests.sync_helpers import agent_accepted, assert_exactly_once, cloud_records, wait_for

pytestmark = pytest.mark.integration


def poor_link(shape: Shape = POOR) -> Iterator[PoorLink]:
    try:
        with PoorLink(shape) as made:
            yield made
    except LinkUnavailable as why:
        pytest.skip(f"no poor link on this machine: {why}")


@pytest.fixture
def link() -> Iterator[PoorLink]:
    yield from poor_link()


@pytest.fixture
def slow_link() -> Iterator[PoorLink]:
    """32 kbit/s each way (a 2G/EDGE cellular gateway, a satellite modem), 300 ms, 2 % loss."""
    yield from poor_link(Shape(rate_kbit=32))


def status(config: Path) -> dict[str, Any]:
    out = subprocess.run([*EDGE_AGENT, "status", "-c", str(config), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.timeout(420)  # about 70 s with the 2-core machine at load average 10
def test_an_hour_of_backlog_drains_exactly_once_over_a_poor_link(tmp_path: Path, link: PoorLink, agents,
                                                                 ingests) -> None:
    readings = tmp_path / "hour.log"
    write_hour(readings, time.time() - 3700)
    cloud = cloud_broker(tmp_path / "cloud")
    link.call("cloud", cloud.start)
    ingest = IngestProcess(tmp_path, f"mqtt://127.0.0.1:{cloud.port}", f"sqlite:///{tmp_path}/cloud.db")
    ingests.append(ingest)
    link.call("cloud", ingest.start, 60.0)
    link.cut()
    config = hour_config(tmp_path, readings, f"mqtt://{link.address['cloud']}:{cloud.port}")
    agent = AgentProcess(config)
    agents.append(agent)
    link.call("device", agent.start, 30.0)
    wait_for(lambda: held(tmp_path / "data")[1] == READINGS, 180, "the agent holds the hour's summaries")
    records, _ = held(tmp_path / "data")
    assert agent_accepted(config) == READINGS

    wire_before = link.wire_bytes()
    link.cut(False)
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
    # the link is slow, not broken: no connection given up for dead, no batch judged poison, and
    # nothing sent twice (the resend timer outlasts what the link needs for the backlog)
    sync = final["sync"]["counters"]
    misjudged = ("dead_links", "batch_shrinks", "set_aside", "resends")
    assert not {k: sync[k] for k in misjudged if sync.get(k)}, sync
    assert sync["sent"] == records
    print(f"\n{records} records over {link.method} in {drained:.0f} s, "
          f"{(link.wire_bytes() - wire_before) / records:.1f} bytes each on the wire; sync {sync}")


@pytest.mark.timeout(300)  # about 60 s
def test_large_messages_on_a_slow_link_are_late_not_lost(tmp_path: Path, link: PoorLink, ingests) -> None:
    """4,000 records of ~650 bytes that compress only to half (300 random bytes each, as hex):
    batches are cut at ``batch_bytes`` and leave as ~250 kB messages, 8 s each on the link, all
    sent at once (16 in flight). The last is acknowledged by the broker and by the cloud long
    after it was sent, more than a keepalive (30 s) and ``resend_after`` (15 s) later, while the
    PUBACKs and acks ahead of it keep coming. Late, not lost: no resend and no link given up for
    dead (before, the link was dropped as dead after 30 s and a quarter of the records were sent
    twice; with more of them, again every 30 s)."""
    count = 4000
    config, ingest, done, _ = drain_random_records(tmp_path, link, ingests, count, 240)
    assert done.returncode == 0, done.stderr

    rows = link.call("cloud", cloud_records, ingest)
    assert [r["seq"] for r in rows] == list(range(1, count + 1))
    counters = status(config)["sync"]["counters"]
    assert not {k: counters[k] for k in ("resends", "dead_links") if counters.get(k)}, counters
    assert counters["sent"] == count, counters


@pytest.mark.timeout(300)  # about 80 s
def test_on_a_32_kbit_link_messages_shrink_to_what_it_carries(tmp_path: Path, slow_link: PoorLink,
                                                               ingests) -> None:
    """800 of the same records, ~290 kB compressed. Cut only by ``batch_bytes`` and
    ``max_message_bytes`` they leave as two messages of over 30 s each on a 32 kbit/s link,
    longer than ``resend_after`` (15 s) and the keepalive (30 s): before, the first was resent
    and the link given up for dead while it was still arriving, and every record was sent twice.
    With the shipped settings the messages are now sized to what the link has shown it carries,
    each acknowledged within seconds: every record is sent once and stored once, and the link
    is never given up for dead."""
    count = 800
    config, ingest, done, drained = drain_random_records(tmp_path, slow_link, ingests, count, 150)
    counters = status(config)["sync"]["counters"]
    print(f"\n{count} records over 32 kbit/s ({slow_link.method}): exit {done.returncode} after "
          f"{drained:.0f} s; sync {counters}")
    assert done.returncode == 0, done.stderr[-3000:]

    rows = slow_link.call("cloud", cloud_records, ingest)
    assert [r["seq"] for r in rows] == list(range(1, count + 1))
    assert not {k: counters[k] for k in ("resends", "dead_links") if counters.get(k)}, counters
    assert counters["sent"] == count, counters


def drain_random_records(tmp_path: Path, link: PoorLink, ingests: list[IngestProcess], count: int,
                         timeout: int) -> tuple[Path, IngestProcess, subprocess.CompletedProcess[str], float]:
    """``count`` records of ~650 bytes that compress only to half (300 random bytes each, as
    hex), drained over ``link`` by ``edge-agent sync --once``; the cloud's broker is stopped after."""
    rng = random.Random(3)
    box = Outbox.open(tmp_path / "data")
    records = []
    for i in range(count):
        data = {"sensor": f"s{i % 100}", "value": round(rng.gauss(15, 0.5), 2),
                "trace": f"{rng.getrandbits(2400):0600x}"}
        records.append(("raw", 1_700_000_000 + i * 0.01, data))
    box.commit(Changes(records=records))
    box.epoch()
    box.close()
    cloud = cloud_broker(tmp_path / "cloud")
    link.call("cloud", cloud.start)
    ingest = IngestProcess(tmp_path, f"mqtt://127.0.0.1:{cloud.port}", f"sqlite:///{tmp_path}/cloud.db")
    ingests.append(ingest)
    link.call("cloud", ingest.start, 60.0)
    config = hour_config(tmp_path, tmp_path / "unused.log", f"mqtt://{link.address['cloud']}:{cloud.port}")
    sync = [*EDGE_AGENT, "sync", "-c", str(config), "--once", "--timeout", str(timeout)]
    began = time.monotonic()
    done = link.call("device", functools.partial(subprocess.run, sync, capture_output=True, text=True))
    drained = time.monotonic() - began
    cloud.stop()
    return config, ingest, done, drained

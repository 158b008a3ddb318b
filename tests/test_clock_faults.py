"""The gateway's wall clock stepping under a running agent (libfaketime; the monotonic clock is
left alone, as NTP leaves it), and sensor clocks that reset or run ahead: every reading is
counted once in a window summary, or refused by name."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from agent.health.status import read_status
from agent.outbox import Outbox
from tests.conftest import AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
HOUR, DAY = 3600, 86400


class FakeTimeAgent(AgentProcess):
    """An agent whose wall clock is ours to step: its offset is read from ``offset_file``."""

    def __init__(self, config: Path, offset_file: Path) -> None:
        super().__init__(config)
        self.offset_file = offset_file
        self.set_offset(0)

    def set_offset(self, seconds: int) -> None:
        self.offset_file.write_text(f"{seconds:+d}\n")

    def start(self, timeout: float = 15.0, env: dict[str, str] | None = None) -> FakeTimeAgent:
        super().start(timeout, {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.offset_file),
            "FAKETIME_CACHE_DURATION": "0",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            **(env or {}),
        })
        return self


@pytest.fixture
def faketime() -> None:
    if not LIBFAKETIME.exists() or shutil.which("faketime") is None:
        pytest.skip("libfaketime is not installed (scripts/ensure-deps.sh installs it)")


def test_wall_clock_steps_of_an_hour_and_a_day_lose_nothing(tmp_path, faketime, broker: Broker, agents):
    config = agent_config(tmp_path, broker.url, extra='max_clock_skew = "10m"')
    agent = FakeTimeAgent(config, tmp_path / "offset").start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    sent = 0
    # Readings without a ts of their own: the gateway stamps them with its (stepping) clock.
    for offset in (0, -HOUR, 0, DAY, 0):
        agent.set_offset(offset)
        time.sleep(0.3)
        for i in range(20):
            infos = [publisher.publish(f"sensors/g{k}", json.dumps({"value": float(i)})) for k in range(4)]
            for info in infos:
                info.wait_for_publish(10)
            sent += len(infos)
            time.sleep(0.1)
    # A sensor of its own time: it runs, reboots two days back, runs again; one reading is
    # from three days ahead (the source refuses it as bad_ts, or the module caps its watermark).
    now = time.time()
    own = [("s1", now + i * 0.1, 1.0) for i in range(20)]
    own += [("s1", now - 2 * DAY + i * 0.1, 2.0) for i in range(20)]
    own += [("s1", now + 3 * DAY, 3.0)]
    own += [("s1", now - 2 * DAY + 3 + i * 0.1, 4.0) for i in range(20)]
    sent += publisher.readings(own)
    time.sleep(1.5)
    status = read_status(tmp_path / "data")
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    publisher.close()

    box = Outbox.open_readonly(tmp_path / "data")
    try:
        counted = sum(record.data["count"] for record in box.unsent())
        counters = box.counters()
    finally:
        box.close()
    refused = counters.get("dropped", {}).get("bad_ts", 0)
    window = counters.get("module:win", {})
    assert counted + refused == sent, (counted, refused, sent, counters)
    assert refused == 1  # the reading from three days ahead
    assert window.get("late", 0) == 0
    assert window.get("clock_reset", 0) >= 2  # the day back, the sensor's reboot
    assert counters["clock"]["steps"] == 4
    assert status["clock"]["steps"] >= 3  # as status showed it while running
    assert "the wall clock stepped back by 1.0 d" in agent.output()


POLLER = Path(__file__).parent / "parity" / "io_modules.py"


def test_a_producers_timer_neither_stalls_nor_bursts_across_wall_clock_steps(
    tmp_path, faketime, broker: Broker, agents
) -> None:
    """A producer (``inputs = []``) polling every 0.5 s of the monotonic clock, while the
    gateway's wall clock steps back a day, forward a day, and back to the right time: it goes on
    polling in each phase (no stall after the step back), and never polls more often than its
    interval allows (no burst after the step forward); each poll is stamped with the wall time
    of its moment. The harness runs the same module across the same steps in
    tests/test_module_io.py."""
    config = agent_config(tmp_path, broker.url, modules=f"""
        [[modules]]
        name = "poller"
        use = "{POLLER}:Poller"
        inputs = []
        sync = true
        """)
    agent = FakeTimeAgent(config, tmp_path / "offset")
    started = time.monotonic()
    agent.start()
    agents.append(agent)
    phases = (0, -DAY, DAY, 0)
    for offset in phases:
        agent.set_offset(offset)
        time.sleep(2.0)
    agent.signal(signal.SIGTERM)
    elapsed = time.monotonic() - started
    assert agent.wait(10) == 0, agent.output()

    box = Outbox.open_readonly(tmp_path / "data")
    try:
        polls = [(record.ts, record.data["poll"]) for record in box.unsent() if record.stream == "poller"]
        steps = box.counters()["clock"]["steps"]
    finally:
        box.close()
    numbers = [number for _, number in polls]
    assert numbers == list(range(1, len(numbers) + 1)), numbers  # none skipped, none twice
    assert len(numbers) <= elapsed / 0.5 + 1, (len(numbers), elapsed)  # no burst
    now = time.time()
    back = [ts for ts, _ in polls if ts < now - DAY / 2]
    ahead = [ts for ts, _ in polls if ts > now + DAY / 2]
    right = [ts for ts, _ in polls if abs(ts - now) < DAY / 2]
    assert len(back) >= 2 and len(ahead) >= 2 and len(right) >= 4, polls  # no stall in any phase
    # in the order they were made: the stamps follow the wall clock's steps
    assert [ts for ts, _ in polls] != sorted(ts for ts, _ in polls)
    assert steps >= 3


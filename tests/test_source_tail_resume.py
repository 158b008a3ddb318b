"""A restarted agent goes on reading a followed file where the last run stopped: after a stop
(SIGTERM) and after a crash (SIGKILL), with lines appended, the file rotated or truncated while it
was down, and across a reload that restarts the source. Every line is counted exactly once in the
window summaries of the real agent process."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.health.status import read_status
from agent.outbox import Outbox
from tests.conftest import AgentProcess
from tests.remote_helpers import wait_until
from tests.source_helpers import WINDOW, windows

T0 = 1_700_000_000.0


class Lines:
    """Numbered lines ``file <n> <ts>``: each value once, so a line read twice or skipped shows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0

    def append(self, count: int, path: Path | None = None) -> None:
        with (path or self.path).open("a") as file:
            for n in range(self.written, self.written + count):
                file.write(f"file {n} {T0 + n}\n")
        self.written += count


def saved_place(data: Path) -> dict[str, Any] | None:
    """Where the agent's last commit says the source is in its file."""
    box = Outbox.open_readonly(data)
    try:
        saved, _ = box.checkpoint()
    finally:
        box.close()
    place: dict[str, Any] | None = saved.get("~source:log", {}).get("place")
    return place


def accepted(data: Path) -> int:
    figures = read_status(data).get("sources", {}).get("log", {})
    return int(figures.get("accepted", 0))


@pytest.mark.integration
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restarted_agent_reads_every_line_once_across_rotation_and_truncation(
    tmp_path: Path, stop: signal.Signals
) -> None:
    log = tmp_path / "s.log"
    log.touch()
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "gw"\ndata_dir = "data"\n' + textwrap.dedent(f"""
        [[sources]]
        name = "log"
        type = "tail"
        path = "{log}"
        format = "text"
        poll = "50ms"
        """) + WINDOW)
    data = tmp_path / "data"
    lines = Lines(log)
    agent = AgentProcess(config)
    try:
        agent.start()
        # Its first commit saves where it starts (the end of the file): a crash before that, in
        # the very first run, would find no place to go on from.
        wait_until(lambda: saved_place(data) is not None, 30, "the first place saved")
        lines.append(20_000)  # stopped while it reads them (a crash mid-file)
        agent.signal(stop)
        agent.wait(30)

        lines.append(1000)  # written while it is down: read once it is back
        agent.start()
        wait_until(lambda: accepted(data) == lines.written, 60, "every line read after a restart")
        agent.signal(stop)
        agent.wait(30)

        lines.append(500)  # logrotate while it is down: the rest of the old file comes first
        os.rename(log, tmp_path / "s.log.1")
        lines.append(700)
        agent.start()
        wait_until(lambda: accepted(data) == lines.written, 60, "every line read after a rotation")
        lines.append(300)
        wait_until(lambda: accepted(data) == lines.written, 60, "every line read after a rotation")
        config.write_text(config.read_text().replace('poll = "50ms"', 'poll = "60ms"'))
        agent.signal(signal.SIGHUP)  # a reload restarts the source: the new one goes on too
        lines.append(200)
        agent.wait_for_log("reloaded: restarted log")
        lines.append(200)
        wait_until(lambda: accepted(data) == lines.written, 60, "every line read after a reload")
        agent.signal(stop)
        agent.wait(30)

        log.write_text("")  # copytruncate while it is down, then more lines than it had read
        lines.append(400)
        agent.start()
        wait_until(lambda: accepted(data) == lines.written, 60, "every line read after a truncation")
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output()
    finally:
        agent.stop()

    summary = windows(data)["file"]
    assert summary["count"] == lines.written == 23_300, agent.output()[-3000:]
    assert summary["sum"] == sum(range(lines.written))
    assert (summary["min"], summary["max"]) == (0, lines.written - 1)
    status = read_status(data)
    assert status["sources"]["log"]["accepted"] == lines.written
    assert "where the last run stopped" in agent.output()

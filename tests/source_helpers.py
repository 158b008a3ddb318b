"""An agent process running some sources into a window, and the summaries it left in its outbox."""

from __future__ import annotations

import signal
import textwrap
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.health.status import read_status
from agent.outbox import Outbox
from tests.conftest import AgentProcess
from tests.remote_helpers import wait_until

WINDOW = """
[[modules]]
name = "win"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "1h"
stats = ["count", "sum", "min", "max", "first", "last"]
"""


def run_agent(
    tmp_path: Path, sources: str, during: Callable[[AgentProcess], None], extra: str = ""
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run an agent with ``sources`` and an hour-long window on ``sensors/#``; call ``during``
    while it runs, then stop it with SIGTERM (which closes the windows). The window summaries
    by sensor (each sensor's summaries merged) and the final status."""
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "gw"\ndata_dir = "data"\n{extra}\n' + textwrap.dedent(sources) + WINDOW
    )
    agent = AgentProcess(config).start()
    try:
        during(agent)
        agent.signal(signal.SIGTERM)
        assert agent.wait(15) == 0, agent.output()
    finally:
        agent.stop()
    return windows(tmp_path / "data"), read_status(tmp_path / "data")


def wait_for_sources(
    data_dir: Path, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0
) -> None:
    """Wait until ``check`` holds for the sources' figures in the committed status (a source
    not in it yet has no figures)."""
    wait_until(lambda: check(defaultdict(dict, read_status(data_dir)["sources"])), timeout, what,
               interval=0.1)


def windows(data_dir: Path) -> dict[str, dict[str, Any]]:
    box = Outbox.open_readonly(data_dir)
    try:
        rows = [record.data for record in box.unsent() if record.stream == "win"]
    finally:
        box.close()
    merged: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda row: row["start"]):
        seen = merged.get(row["sensor"])
        if seen is None:
            merged[row["sensor"]] = dict(row)
            continue
        seen["count"] += row["count"]
        seen["sum"] += row["sum"]
        seen["min"] = min(seen["min"], row["min"])
        seen["max"] = max(seen["max"], row["max"])
        seen["last"] = row["last"]
    return merged

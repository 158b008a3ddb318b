"""The one-command demo starts everything, syncs all three gateways, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_the_demo_syncs_every_gateway_and_ctrl_c_stops_everything(tmp_path):
    keep = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "simulators", "demo", "--keep", str(keep), "--cut-after", "4",
         "--cut-for", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120  # a first window closes after 10 s; a busy machine is slower
        synced: dict[str, int] = {}
        while time.monotonic() < deadline and len(synced) < 3:
            time.sleep(1)
            assert demo.poll() is None, demo.stdout.read() if demo.stdout else ""
            if (keep / "cloud.db").exists():
                with sqlite3.connect(keep / "cloud.db") as db, contextlib.suppress(sqlite3.OperationalError):
                    synced = dict(db.execute("SELECT device_id, count(*) FROM records GROUP BY device_id"))
        assert set(synced) == {"gw-a", "gw-b", "gw-c"}
        children = children_of(demo.pid)
        assert len(children) >= 8  # two brokers, the cloud, three agents, three sensor feeds
    finally:
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
    assert demo.returncode == 0, output
    assert "sign in as  demo / " in output and "link of gw-c cut" in output
    assert "nothing left running" in output
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text()

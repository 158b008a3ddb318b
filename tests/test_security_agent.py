"""The agent's own hardening, as a process: the files it creates are its user's alone, and a
config's expressions cannot exhaust the parser's stack."""

from __future__ import annotations

import os
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import EDGE_AGENT, AgentProcess
from tests.sync_helpers import wait_for

pytestmark = pytest.mark.integration


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_daemon_creates_its_directory_700_and_its_files_600(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    os.umask(0o022)  # the usual umask outside systemd; the agent inherits it
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # an existing folder others may read: closed at start
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        device_id = "gw"
        data_dir = "{data}"
        [[sources]]
        name = "sim"
        type = "simulator"
        rate = 20
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "200ms"
        """))
    agents.append(AgentProcess(config).start())
    wait_for(lambda: (data / "outbox.db-wal").exists(), 10, "the outbox's journal")
    assert _mode(data) == 0o700
    created = [path for path in data.rglob("*") if path.is_file()]
    assert created, "the agent wrote nothing"
    assert {path.name: _mode(path) for path in created} == {path.name: 0o600 for path in created}


def test_an_expression_nested_thousands_deep_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    where = "(" * 3000 + "value > 1" + ")" * 3000
    config.write_text(textwrap.dedent(f"""
        device_id = "gw"
        data_dir = "{tmp_path / 'data'}"
        [[modules]]
        name = "t"
        use = "transform"
        inputs = ["sensors/#"]
        [modules.with]
        where = "{where}"
        [[modules]]
        name = "u"
        use = "transform"
        inputs = ["sensors/#"]
        [modules.with]
        where = "{'not ' * 3000}true"
        """))
    out = subprocess.run([*EDGE_AGENT, "check", "-c", str(config)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr
    assert "modules[0](t).with.where" in out.stderr and "modules[1](u).with.where" in out.stderr, out.stderr

"""``edge-agent backup`` while the daemon writes, and ``edge-agent restore`` once it has stopped:
a consistent copy (integrity_check), the same records (seqs and data), nothing of the running
outbox deleted, and numbering that carries on after the restored records."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import EDGE_AGENT, AgentProcess

pytestmark = pytest.mark.integration


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGE_AGENT, *args], capture_output=True, text=True, timeout=60)


def rows(db: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT seq, stream, data FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()


def epoch(db: Path) -> str | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(f"""
        device_id = "bk-1"
        data_dir = "{tmp_path / 'data'}"
        [buffer]
        commit_interval = "20ms"
        [[sources]]
        name = "sim"
        type = "simulator"
        sensors = 20
        rate = 200
        [[modules]]
        name = "raw"
        use = "transform"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        where = "true"
        [cloud]  # never reached: the uploader only gives the outbox its identity (epoch)
        url = "mqtt://127.0.0.1:9"
        """))
    return path


def test_a_backup_taken_while_the_daemon_writes_restores_the_same_records(
    tmp_path: Path, config: Path, agents: list[AgentProcess]
) -> None:
    agent = AgentProcess(config).start()
    agents.append(agent)
    time.sleep(1.0)  # thousands of records a second are being committed while the backup runs
    made = edge_agent("backup", "-c", str(config), str(tmp_path / "backup"))
    assert made.returncode == 0, made.stderr
    assert "integrity ok" in made.stdout
    saved = rows(tmp_path / "backup" / "outbox.db")
    assert len(saved) > 100 and [seq for seq, _, _ in saved] == list(range(1, len(saved) + 1))

    refused = edge_agent("restore", "-c", str(config), str(tmp_path / "backup"))
    assert refused.returncode == 1 and "is running: stop it first" in refused.stderr

    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    later = rows(tmp_path / "data" / "outbox.db")
    assert later[: len(saved)] == saved and len(later) > len(saved)  # the daemon went on writing

    restored = edge_agent("restore", "-c", str(config), str(tmp_path / "backup"))
    assert restored.returncode == 0, restored.stderr
    assert rows(tmp_path / "data" / "outbox.db") == saved
    # a new identity: the cloud renumbers it after what it holds instead of taking new records
    # for repeats of the ones it had from before the restore
    assert epoch(tmp_path / "backup" / "outbox.db") is not None
    assert epoch(tmp_path / "data" / "outbox.db") is None
    (aside,) = (tmp_path / "data").glob("before-restore-*")
    assert rows(aside / "outbox.db") == later  # the outbox it replaced is kept, whole

    agent.start()  # numbering carries on from the restored records
    time.sleep(0.5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    after = rows(tmp_path / "data" / "outbox.db")
    assert after[: len(saved)] == saved and after[len(saved)][0] == len(saved) + 1
    assert epoch(tmp_path / "data" / "outbox.db") not in (None, epoch(tmp_path / "backup" / "outbox.db"))


def test_a_backup_refuses_a_folder_in_use_and_restore_refuses_what_is_not_a_backup(
    tmp_path: Path, config: Path
) -> None:
    (tmp_path / "data").mkdir()
    nothing = edge_agent("backup", "-c", str(config), str(tmp_path / "b"))
    assert nothing.returncode == 1 and "no outbox yet" in nothing.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "outbox.db").write_bytes(b"not a database" * 100)
    bad = edge_agent("restore", "-c", str(config), str(tmp_path / "junk"))
    assert bad.returncode == 1 and "not a readable SQLite database" in bad.stderr


def test_a_backup_to_a_folder_that_cannot_be_made_says_so_in_one_line(
    tmp_path: Path, config: Path, agents: list[AgentProcess]
) -> None:
    agent = AgentProcess(config).start()
    agents.append(agent)
    time.sleep(0.5)
    (tmp_path / "a-file").write_text("")
    made = edge_agent("backup", "-c", str(config), str(tmp_path / "a-file" / "backup"))
    assert made.returncode == 1 and "Traceback" not in made.stderr
    assert made.stderr.startswith(f"cannot back up {tmp_path / 'data'} to {tmp_path / 'a-file' / 'backup'}: ")
    assert len(made.stderr.splitlines()) == 1

"""scripts/install.sh under a relocated root: install, upgrade in place, uninstall, purge."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install.sh"

# Each install builds the project and fills a venv: minutes on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env={**os.environ, "EDGE_AGENT_ROOT": str(root)},
        capture_output=True, text=True, timeout=600,
    )


def test_install_upgrade_and_uninstall_keep_the_operators_files(tmp_path):
    (tmp_path / "etc/mosquitto/conf.d").mkdir(parents=True)  # a local Mosquitto, as Debian ships it
    (tmp_path / "etc/mosquitto/mosquitto.conf").write_text("include_dir /etc/mosquitto/conf.d\n")
    dropin = tmp_path / "etc/mosquitto/conf.d/edge-agent.conf"
    first = install(tmp_path)
    assert first.returncode == 0, first.stderr
    agent = tmp_path / "opt/edge-agent/venv/bin/edge-agent"
    config = tmp_path / "etc/edge-agent/agent.toml"
    assert agent.exists() and config.exists()
    assert (tmp_path / "etc/systemd/system/edge-agent.service").read_text() == (
        ROOT / "configs/edge-agent.service"
    ).read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert dropin.read_text() == (ROOT / "configs/mosquitto-local.conf").read_text()
    assert "warning" not in first.stderr
    assert subprocess.run([str(agent), "check", "-c", str(config)], capture_output=True).returncode == 0
    # on PATH for every user
    link = tmp_path / "usr/local/bin/edge-agent"
    assert link.is_symlink() and link.resolve() == agent.resolve()
    assert subprocess.run([str(link), "--version"], capture_output=True).returncode == 0
    # the template's placeholders keep the service from starting, and the install says so
    assert "enabled but NOT started" in first.stderr and "broker.example.com is a placeholder" in first.stderr
    pre = next(line for line in (tmp_path / "etc/systemd/system/edge-agent.service").read_text().splitlines()
               if line.startswith("ExecStartPre="))
    argv = pre.removeprefix("ExecStartPre=").replace("/opt/", f"{tmp_path}/opt/").replace(
        "/etc/", f"{tmp_path}/etc/").split()
    refused = subprocess.run(argv, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "cloud.url: broker.example.com is a placeholder" in refused.stderr
    assert "still the template" in refused.stderr

    config.write_text(config.read_text().replace('device_id = "gw-01"', 'device_id = "gw-77"')
                      .replace("broker.example.com", "cloud.gw.internal"))
    (tmp_path / "var/lib/edge-agent/outbox.db").write_bytes(b"data")
    again = install(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "kept" in again.stderr and 'device_id = "gw-77"' in config.read_text()
    assert "NOT started" not in again.stderr  # an edited config passes the service's check
    assert subprocess.run(argv, capture_output=True).returncode == 0
    assert f"kept {dropin}" in again.stderr

    removed = install(tmp_path, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (tmp_path / "opt/edge-agent").exists()
    assert not (tmp_path / "etc/systemd/system/edge-agent.service").exists()
    assert not link.is_symlink()
    assert config.exists() and (tmp_path / "var/lib/edge-agent/outbox.db").exists()

    purged = install(tmp_path, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not config.exists() and not (tmp_path / "var/lib/edge-agent").exists()
    assert not dropin.exists()


def test_unknown_options_are_refused():
    result = subprocess.run([str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown option --frobnicate" in result.stderr

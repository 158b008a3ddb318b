"""The README's quick start and console commands, and docs/install.md's short way, run as
written, in order, in a fresh venv made by the first command, from a copy of the checkout:
each must exit 0 and print no traceback.

What cannot run here as written is replaced, and only that (each replacement is listed in
``_install_md``): the Debian packages are already installed, the checkout is already cloned,
the install goes under a relocated root (EDGE_AGENT_ROOT: no system user, no systemd, so
``sudo -u``/``sudo`` fall away and the service is run in the foreground for a few seconds),
the editor step is a sed of the template's placeholder, and brokers are test Mosquittos on
free ports.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Broker, free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
RUN_FOR = 15.0
"""Seconds a command that runs until Ctrl-C is given before it gets SIGINT."""


def block(doc: Path, marker: str) -> list[str]:
    """The commands of the first ```sh block after the ``<!-- quick path...`` comment."""
    text = doc.read_text()
    start = text.index(f"<!-- quick path{marker}")
    body = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert body is not None, f"no sh block after the quick path marker in {doc}"
    return [line for line in body.group(1).splitlines() if line.strip() and not line.startswith("#")]


def run(command: str, cwd: Path, env: dict[str, str], until_interrupted: bool = False,
        stdin: str = "") -> str:
    if until_interrupted:
        process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(RUN_FOR)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        code = process.returncode
    else:
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, input=stdin, text=True,
                              capture_output=True, timeout=900)
        output, code = done.stdout + done.stderr, done.returncode
    assert code == 0, f"{command}\nexit {code}:\n{output}"
    assert "Traceback" not in output, f"{command}\n{output}"
    return output


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the tracked files, as a fresh clone would have them."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    copy = tmp_path / "edge-agent"
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes((ROOT / name).read_bytes())
    (copy / "scripts/install.sh").chmod(0o755)
    return copy


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT", "VIRTUAL_ENV"))}


def test_the_readme_quick_start_and_console_commands_run_as_written(checkout: Path, broker: Broker):
    env = _env()
    for command in block(checkout / "README.md", ":"):
        output = run(command, checkout, env, until_interrupted=" run -c " in command)
        if " status " in command:
            assert "backlog" in output and "/../" not in output
        if " outbox " in command:
            assert output.count("\n") == 5
    http = free_port()
    for command in block(checkout / "README.md", ": console"):
        if " serve " in command:  # the test's broker, and a port of its own on a shared machine
            command = command.replace("mqtt://127.0.0.1:1883", broker.url) + f" --http 127.0.0.1:{http}"
        run(command, checkout, env, until_interrupted=" serve " in command,
            stdin="a long enough password\na long enough password\n")


def test_the_install_short_way_runs_under_a_relocated_root(checkout: Path, tmp_path: Path, broker: Broker):
    root = tmp_path / "root"
    env = {**_env(), "EDGE_AGENT_ROOT": str(root), "EDGE_AGENT__DATA_DIR": f'"{root}/var/lib/edge-agent"',
           "EDGE_AGENT__SOURCES__0__URL": broker.url}
    ran = []
    for command in block(checkout / "docs/install.md", ":"):
        command = _install_md(command, root, broker)
        if command is None:
            continue
        ran.append(command)
        run(command, checkout, env, until_interrupted=" run -c " in command)
    assert len(ran) >= 5, ran


def _install_md(command: str, root: Path, broker: Broker) -> str | None:
    command = command.split("  #")[0].strip()
    if command.startswith(("sudo apt-get", "git clone")):
        return None  # installed and cloned already
    if command.startswith("sudoedit "):  # the operator's edit: a real broker for the placeholder
        return f"sed -i 's#mqtt://broker.example.com:1883#{broker.url}#' {root}/etc/edge-agent/agent.toml"
    if command == "sudo systemctl restart edge-agent":  # no systemd here: the unit's command, for a while
        return f"{root}/opt/edge-agent/venv/bin/edge-agent run -c {root}/etc/edge-agent/agent.toml"
    command = command.removeprefix("sudo -u edge-agent ").removeprefix("sudo ")
    command = command.replace("/etc/edge-agent/", f"{root}/etc/edge-agent/")
    if command.startswith("edge-agent "):  # on PATH through the link install.sh made
        command = f"{root}/usr/local/bin/{command}"
    return command

"""The sync commands' contracts: exit codes and messages that say what is wrong."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EDGE_AGENT, EDGE_CLOUD, Broker, agent_config
from tests.sync_helpers import cloud_section


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def test_the_device_side_loads_no_cloud_packages() -> None:
    code = (
        "import sys, cloud_sync.uploader.uploader, agent.supervisor\n"
        "cloud = {'starlette', 'uvicorn', 'psycopg', 'jinja2'}\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & cloud)\n"
        "print(heavy)"
    )
    assert run(sys.executable, "-c", code).stdout.strip() == "[]"


def test_sync_needs_a_cloud_section(tmp_path: Path) -> None:
    result = run(*EDGE_AGENT, "sync", "-c", str(agent_config(tmp_path)), "--once")
    assert result.returncode == 2 and "cloud: required" in result.stderr


@pytest.mark.integration
def test_sync_once_with_nothing_to_send_exits_zero_and_without_an_ingest_exits_one(
    tmp_path: Path, cloud_broker: Broker
) -> None:
    from agent.outbox import Changes, Outbox

    config = agent_config(tmp_path, extra=cloud_section(cloud_broker.url))
    box = Outbox.open(tmp_path / "data")
    box.close()
    empty = run(*EDGE_AGENT, "sync", "-c", str(config), "--once", "--timeout", "5")
    assert empty.returncode == 0 and "up to seq 0" in empty.stdout
    box = Outbox.open(tmp_path / "data")
    box.commit(Changes(records=[("win", 1.0, {"count": 1})]))
    box.close()
    alone = run(*EDGE_AGENT, "sync", "-c", str(config), "--once", "--timeout", "3")
    assert alone.returncode == 1
    assert "acknowledged up to seq 0 of 1" in alone.stderr and "edge-cloud serve" in alone.stderr


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--db", "mysql://x/y"], 1, "--db"),
        (["--db", "postgresql://nobody@127.0.0.1:1/x"], 1, "cannot open the PostgreSQL store"),
        (["--http", "nowhere"], 2, "HOST:PORT"),
        (["--broker", "http://x"], 2, "mqtt://"),
        (["--tokens-file", "/nonexistent/tokens"], 2, "cannot read"),
    ],
)
def test_serve_refuses_bad_options_by_name(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    options = {
        "--broker": "mqtt://127.0.0.1:1",
        "--db": f"sqlite:///{tmp_path}/c.db",
        "--http": "127.0.0.1:1",
    }
    for index in range(0, len(args), 2):
        options[args[index]] = args[index + 1]
    flat = [item for pair in options.items() for item in pair]
    result = run(*EDGE_CLOUD, "serve", *flat, timeout=30)
    assert result.returncode == code and says in result.stderr, result.stderr


def test_serve_exits_naming_an_http_address_held_by_another_program(
    tmp_path: Path, cloud_broker: Broker
) -> None:
    # the broker is up, so the ingest starts: without its console and API it must not live on
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run(*EDGE_CLOUD, "serve", "--broker", cloud_broker.url, "--db", f"sqlite:///{tmp_path}/c.db",
                     "--http", f"127.0.0.1:{port}", timeout=30)
    assert result.returncode == 1, result.stderr
    assert "address already in use" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"--http: the console and API cannot listen on 127.0.0.1:{port} (the reason is logged above)"
    )

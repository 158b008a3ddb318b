"""Fixtures: real Mosquitto brokers on free ports, agent configs and agent processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
EDGE_AGENT = [sys.executable, "-m", "agent"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Broker:
    """A Mosquitto process of the test's own, which the test may stop, kill and restart."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / f"mosquitto-{self.port}.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            "set_tcp_nodelay true\n"
            + textwrap.dedent(extra_config)
        )
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (.ci/run does it)")
    server = Broker(tmp_path).start()
    yield server
    server.stop()


class AgentProcess:
    """``edge-agent run`` as a child process, with its stderr kept in a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0, env: dict[str, str] | None = None) -> AgentProcess:
        earlier = self.output().count("ready")  # a restart appends to the same log
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*EDGE_AGENT, "run", "-c", str(self.config)], stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.wait_for_log("ready", timeout, count=earlier + 1)
        return self

    def wait_for_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output().count(text) >= count:
                return
            if self.process and self.process.poll() is not None:
                raise AssertionError(f"the agent exited ({self.process.returncode}):\n{self.output()}")
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not in the agent's log after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agent processes a test started; whatever is still running at the end is killed."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def agent_config(
    tmp_path: Path,
    broker_url: str | None = None,
    modules: str | None = None,
    extra: str = "",
    qos: int = 1,
    name: str = "agent.toml",
) -> Path:
    """Write an agent config: an MQTT source on ``broker_url`` and a 1 s window by default."""
    source = (
        f"""
        [[sources]]
        name = "local"
        type = "mqtt"
        url = "{broker_url}"
        topics = ["sensors/#"]
        qos = {qos}
        keepalive = "5s"
        """
        if broker_url
        else ""
    )
    if modules is None:
        modules = """
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "1s"
        stats = ["count", "mean", "min", "max"]
        """
    path = tmp_path / name
    path.write_text(
        textwrap.dedent(
            f"""
            device_id = "test-gw"
            data_dir = "{tmp_path / 'data'}"
            {extra}
            """
        )
        + textwrap.dedent(source)
        + textwrap.dedent(modules)
    )
    return path


# -- cloud sync: a second ("cloud") broker, the ingest as a process, a PostgreSQL database ----------

EDGE_CLOUD = [sys.executable, "-m", "cloud_sync"]
PG_ADMIN_URL = os.environ.get("EDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


class IngestProcess:
    """``edge-cloud serve`` as a child process on ``broker``, with its log in a file."""

    def __init__(
        self, workdir: Path, broker_url: str, db_url: str, *extra: str, token: str = "test-token"
    ) -> None:
        self.http_port = free_port()
        self.token = token
        self.args = [*EDGE_CLOUD, "serve", "--broker", broker_url, "--db", db_url,
                     "--http", f"127.0.0.1:{self.http_port}", "--client-id", "test-ingest", *extra]
        self.log = workdir / f"ingest-{self.http_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> IngestProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "EDGE_CLOUD_TOKEN": self.token},
            )
        deadline = time.monotonic() + timeout
        while "ingesting" not in self.output().split("edge-cloud: store")[-1]:
            if self.process.poll() is not None:
                raise AssertionError(f"the ingest exited ({self.process.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ingest did not subscribe within {timeout} s:\n{self.output()}")
            time.sleep(0.05)
        wait_for_port(self.http_port)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def api(self, path: str) -> object:
        import json
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode if self.process else None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def cloud_broker(tmp_path: Path) -> Iterator[Broker]:
    """A second Mosquitto, standing for the cloud's (the ``broker`` fixture is the gateway's)."""
    workdir = tmp_path / "cloud-broker"
    workdir.mkdir()
    server = Broker(workdir).start()
    yield server
    server.stop()


@pytest.fixture
def ingests() -> Iterator[list[IngestProcess]]:
    """Ingest processes a test started; whatever still runs at the end is stopped."""
    started: list[IngestProcess] = []
    yield started
    for ingest in started:
        ingest.kill()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards; skipped (saying why) when
    no server answers at ``EDGE_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432/postgres)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[cloud]')")
    name = f"edge_test_{os.getpid()}_{free_port()}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({str(exc).strip()[:120]}); "
                    ".ci/run starts it, or set EDGE_TEST_PG")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

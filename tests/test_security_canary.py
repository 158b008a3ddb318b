"""No secret in any output: canary passwords (the cloud broker's from the environment, the local
broker's and the ingest's from files) go through a whole run at DEBUG level — sync, a pushed
config, commands, the console — and then every output is searched for them: the agent's log,
``status`` (text and JSON), ``/metrics``, ``check``, every console page and API answer, command
replies, the ingest's log, and the bytes of the cloud store and of the agent's data directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher

from cloud_sync.server.console.users import write_users
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, IngestProcess, free_port
from tests.remote_helpers import wait_until
from tests.sync_helpers import cloud_section

pytestmark = pytest.mark.integration

CLOUD_SECRET = "canary-cloud-7f3a91c2"
LOCAL_SECRET = "canary-local-b05e44d8"
INGEST_SECRET = "canary-ingest-19cd2e70"
CANARIES = (CLOUD_SECRET, LOCAL_SECRET, INGEST_SECRET)
USER, PASSWORD = "operator", "a long enough password"


def password_broker(workdir: Path, users: dict[str, str]) -> Broker:
    workdir.mkdir()
    passwords = workdir / "passwords"
    for index, (name, secret) in enumerate(users.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *create, str(passwords), name, secret],
                       check=True, capture_output=True)
    broker = Broker(workdir, f"password_file {passwords}\nuser root\n")
    text = broker.config.read_text()
    broker.config.write_text(text.replace("allow_anonymous true", "allow_anonymous false"))
    return broker


def test_no_secret_in_any_output(
    tmp_path: Path, agents: list[AgentProcess], ingests: list[IngestProcess]
) -> None:
    cloud = password_broker(tmp_path / "cloud", {"test-gw": CLOUD_SECRET, "ingest": INGEST_SECRET}).start()
    local = password_broker(tmp_path / "local", {"test-gw": LOCAL_SECRET, "feed": "feed-pass"}).start()
    try:
        _run(tmp_path, cloud, local, agents, ingests)
    finally:
        cloud.stop()
        local.stop()


def _run(tmp_path: Path, cloud: Broker, local: Broker, agents: list[AgentProcess],
         ingests: list[IngestProcess]) -> None:
    local_pass = tmp_path / "local.pass"
    local_pass.write_text(LOCAL_SECRET + "\n")
    local_pass.chmod(0o644)  # too open: warned about (by name, never by content)
    ingest_pass = tmp_path / "ingest.pass"
    ingest_pass.write_text(INGEST_SECRET + "\n")
    ingest_pass.chmod(0o600)
    os.environ["CANARY_CLOUD_PASSWORD"] = CLOUD_SECRET
    metrics_port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        device_id = "test-gw"
        data_dir = "{tmp_path / 'data'}"
        log_level = "DEBUG"
        [metrics]
        listen = "127.0.0.1:{metrics_port}"
        [[sources]]
        name = "local"
        type = "mqtt"
        url = "{local.url}"
        username = "test-gw"
        password_file = "{local_pass}"
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "1s"
        stats = ["count", "mean"]
        """) + cloud_section(cloud.url, username="test-gw", password_env="CANARY_CLOUD_PASSWORD")
        + '\n[remote]\nallow_config = true\ngrace_period = "1s"\n')
    users = tmp_path / "users"
    write_users(users, {USER: PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)})
    ingest = IngestProcess(tmp_path, cloud.url, f"sqlite:///{tmp_path}/cloud.db", "--users", str(users),
                           "--username", "ingest", "--password-file", str(ingest_pass)).start()
    ingests.append(ingest)
    agent = AgentProcess(config).start()
    agents.append(agent)
    agent.wait_for_log("remote control: subscribed")
    feed = _feed(local.port)
    wait_until(lambda: ingest.api("/api/devices"), 20, "the device at the cloud")
    outputs: dict[str, str] = {}
    base = f"http://127.0.0.1:{ingest.http_port}"
    token = {"Authorization": f"Bearer {ingest.token}"}
    with httpx.Client(base_url=base, timeout=20, headers=token) as api:
        wait_until(lambda: api.get("/api/devices/test-gw/records").json(), 20, "records at the cloud")
        pushed = config.read_text().split("\n[remote]")[0].replace('every = "1s"', 'every = "2s"')
        answer = api.post("/api/devices/test-gw/config", json={"config": pushed})
        assert answer.status_code == 200, answer.text
        outputs["config push"] = answer.text
        wait_until(lambda: (api.get("/api/devices/test-gw/remote").json()["reported"] or {}).get("result")
                   == "applied", 20, "the pushed config applied")
        for name in ("status", "ping", "sync-now"):
            outputs[f"command {name}"] = api.post(f"/api/devices/test-gw/commands/{name}", content=b"{}").text
        for path in ("/api/devices", "/api/devices/test-gw", "/api/devices/test-gw/records?limit=100",
                     "/api/stats", "/api/quarantine", "/api/fleet", "/api/devices/test-gw/remote",
                     "/api/devices/test-gw/history", "/api/devices/test-gw/streams", "/healthz"):
            outputs[path] = api.get(path).text
    with httpx.Client(base_url=base, timeout=20) as browser:
        form = browser.get("/signin").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        browser.post("/signin", data={"csrf": csrf.group(1), "name": USER, "password": PASSWORD, "next": "/"},
                     headers={"Origin": base})
        for path in ("/fleet", "/devices/test-gw", "/devices/test-gw/remote"):
            page = browser.get(path)
            assert page.status_code == 200, path
            outputs[f"page {path}"] = page.text
    feed.disconnect()
    wait_until(lambda: "running remote v1" in _edge_agent("status", "-c", str(config)), 10, "status: v1 runs")
    outputs["status --json"] = _edge_agent("status", "-c", str(config), "--json")
    outputs["status"] = _edge_agent("status", "-c", str(config))
    outputs["check"] = _edge_agent("check", "-c", str(config))
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        outputs["metrics"] = response.read().decode()
    # a password put in a URL by mistake is refused without being repeated
    leaky = tmp_path / "leaky.toml"
    leaky.write_text(config.read_text().replace(f'url = "{local.url}"',
                                                f'url = "http://test-gw:{LOCAL_SECRET}@127.0.0.1:1"'))
    outputs["check (leaky)"] = _edge_agent("check", "-c", str(leaky))
    assert "put no password in the URL" in outputs["check (leaky)"]

    agent.signal(15)
    assert agent.wait(10) == 0
    ingest.stop()
    outputs["agent log"] = agent.output()
    outputs["ingest log"] = ingest.output()
    for folder in (tmp_path / "data", tmp_path):
        for file in folder.iterdir():
            if file.is_file() and (file.name.startswith(("cloud.db", "outbox.db", "remote-config"))):
                outputs[f"file {file.name}"] = file.read_bytes().decode("latin-1")

    # the run really did what is searched: DEBUG logs, a warning, data, a config, replies
    assert "DEBUG" in outputs["agent log"] and json.loads(outputs["command status"])["ok"] is True
    warning = f"sources.local.password_file: {local_pass} is open to other users (mode 0644)"
    assert warning in outputs["status"] and warning in outputs["agent log"]
    assert "edge_agent_backlog_records" in outputs["metrics"]
    assert '"win"' in outputs["/api/devices/test-gw/streams"]
    assert "running remote v1" in outputs["status"]
    leaks = [(name, secret) for name, text in outputs.items() for secret in CANARIES if secret in text]
    assert leaks == [], f"secrets in: {leaks}"


def _feed(port: int) -> object:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="feed")
    client.username_pw_set("feed", "feed-pass")
    client.connect("127.0.0.1", port)
    client.loop_start()
    for n in range(20):
        client.publish(f"sensors/t{n % 2}", json.dumps({"value": n}), qos=1).wait_for_publish(5)
    return client


def _edge_agent(*args: str) -> str:
    done = subprocess.run([*EDGE_AGENT, *args], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr

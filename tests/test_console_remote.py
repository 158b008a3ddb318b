"""The device page's remote-control panel, for real: a Mosquitto, ``edge-cloud serve`` and an
agent as processes. Over HTTP: push a config (checked at the console, then reported by the
device), send commands, CSRF and tokens; then one pass in headless Chromium."""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from cloud_sync.server.console.users import write_users
from tests.conftest import AgentProcess, Broker, IngestProcess
from tests.remote_helpers import body, remote_config, wait_until, without_files

pytestmark = pytest.mark.integration
USER, PASSWORD = "operator", "a long enough password"
DEVICE = "test-gw"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("console-remote")
    users = workdir / "users"
    write_users(users, {USER: PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)})
    broker = Broker(workdir).start()
    db = f"sqlite:///{workdir}/cloud.db"
    ingest = IngestProcess(workdir, broker.url, db, "--users", str(users)).start()
    (workdir / "gw").mkdir()
    config = remote_config(workdir / "gw", broker.url, remote='allow_config = true\ngrace_period = "1s"')
    agent = AgentProcess(config).start()
    agent.wait_for_log("remote control: subscribed")
    url = f"http://127.0.0.1:{ingest.http_port}"
    devices = lambda: [d["device_id"] for d in ingest.api("/api/devices")]  # type: ignore[union-attr]  # noqa: E731
    wait_until(lambda: DEVICE in devices(), 15, "the device at the cloud")
    try:
        yield {"url": url, "ingest": ingest, "config": config, "agent": agent}
    finally:
        agent.stop()
        ingest.stop()
        broker.stop()


@pytest.fixture
def client(setup: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=setup["url"], timeout=20) as http:
        page = http.get("/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        signed = http.post("/signin", data={"csrf": token.group(1), "name": USER, "password": PASSWORD,
                                            "next": "/fleet"}, headers={"Origin": setup["url"]})
        assert signed.status_code == 303, signed.text
        yield http


def csrf(http: httpx.Client) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', http.get(f"/devices/{DEVICE}").text)
    assert found is not None
    return found.group(1)


def post(http: httpx.Client, setup: dict[str, Any], path: str, **data: str) -> httpx.Response:
    return http.post(path, data={"csrf": csrf(http), **data},
                     headers={"Origin": setup["url"], "HX-Request": "true"})


def panel(http: httpx.Client) -> str:
    return http.get(f"/devices/{DEVICE}/remote", headers={"HX-Request": "true"}).text


def test_push_a_config_see_the_check_and_the_devices_report(
    client: httpx.Client, setup: dict[str, Any]
) -> None:
    page = client.get(f"/devices/{DEVICE}")
    assert 'id="config-form"' in page.text and 'id="command-form"' in page.text

    base = without_files(body(setup["config"]))
    bad = base.replace('every = "1s"', 'every = "often"') + '\ncolour = "red"\n'
    response = post(client, setup, f"/devices/{DEVICE}/config", config=bad, version="")
    assert response.status_code == 400
    assert "Not published: 2 problems" in response.text
    assert "<code>modules[0].with.every</code>: &#39;often&#39; is not a duration" in response.text
    assert "<code>cloud.colour</code>: unknown key" in response.text
    assert "<html" not in response.text  # an htmx fragment

    good = without_files(body(setup["config"])).replace('every = "1s"', 'every = "3s"')
    response = post(client, setup, f"/devices/{DEVICE}/config", config=good, version="")
    assert response.status_code == 200, response.text
    assert "Checked and published as <strong>v1</strong>" in response.text
    wait_until(lambda: "v1 applied" in panel(client), 15, "the device's report in the panel")
    assert "running remote v1" in panel(client)
    assert "<strong>v1</strong> by operator" in panel(client)

    # the device refuses what the console cannot know: the operator's keys
    local = good.replace(f'device_id = "{DEVICE}"', 'device_id = "elsewhere"')
    assert post(client, setup, f"/devices/{DEVICE}/config", config=local, version="").status_code == 200
    wait_until(lambda: "v2 rejected" in panel(client), 15, "the device's refusal in the panel")
    assert "<code>device_id</code>: set by the operator&#39;s file only" in panel(client)


def test_send_commands_and_see_the_replies(client: httpx.Client, setup: dict[str, Any]) -> None:
    response = post(client, setup, f"/devices/{DEVICE}/command", name="ping", args="")
    assert response.status_code == 200 and "&#34;pong&#34;: true" in response.text, response.text
    command = f"/devices/{DEVICE}/command"
    response = post(client, setup, command, name="restart-module", args='{"name": "nope"}')
    assert "<strong>unknown_module</strong>" in response.text
    response = post(client, setup, f"/devices/{DEVICE}/command", name="set-log-level", args="[1]")
    assert "arguments: a JSON object" in response.text
    assert "unknown_module" in panel(client)  # recent replies


def test_forms_need_the_session_token_and_the_api_a_bearer_token(
    client: httpx.Client, setup: dict[str, Any]
) -> None:
    forged = client.post(f"/devices/{DEVICE}/command", data={"csrf": "forged", "name": "ping"},
                         headers={"Origin": setup["url"]})
    assert forged.status_code == 403
    cross = client.post(f"/devices/{DEVICE}/command", data={"csrf": csrf(client), "name": "ping"},
                        headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    cookie_only = client.post(f"/api/devices/{DEVICE}/commands/ping", content=b"{}")
    assert cookie_only.status_code == 401
    token = {"Authorization": f"Bearer {setup['ingest'].token}"}
    with httpx.Client(base_url=setup["url"], timeout=20, headers=token) as api:
        reply = api.post(f"/api/devices/{DEVICE}/commands/status", content=b"{}").json()
        assert reply["ok"] is True and reply["result"]["device_id"] == DEVICE
        state = api.get(f"/api/devices/{DEVICE}/remote").json()
        assert state["reported"]["result"] in ("applied", "rejected")
        refused = api.post(f"/api/devices/{DEVICE}/config", json={"config": "colour = 1"})
        assert refused.status_code == 400
        assert refused.json()["errors"] == [{"path": "colour", "reason": "unknown key"}]
    anonymous = httpx.post(f"{setup['url']}/devices/{DEVICE}/config", data={"config": "x"})
    assert anonymous.status_code in (303, 307)


def test_the_console_imports_nothing_a_config_names_and_checks_off_the_event_loop(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    marker = tmp_path / "ran-on-the-server"
    evil = tmp_path / "evil.py"
    evil.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    token = {"Authorization": f"Bearer {setup['ingest'].token}"}
    text = body(setup["config"]) + f'\n[[modules]]\nname = "evil"\nuse = "{evil}:Evil"\ninputs = ["a"]\n'
    with httpx.Client(base_url=setup["url"], timeout=20, headers=token) as api:
        refused = api.post(f"/api/devices/{DEVICE}/config", json={"config": text})
        assert refused.status_code == 400, refused.text
        errors = refused.json()["errors"]
        assert [e["path"] for e in errors] == ["modules[1].use", "modules[2].use"], errors
        assert all(e["reason"].startswith("a module file: ") for e in errors)
        # signed, a file is the device's to judge (it imports one only if its operator allows)
        signed = api.post(f"/api/devices/{DEVICE}/config", json={
            "version": 1000, "config": text, "device": DEVICE, "signature": "AAAA"})
        assert signed.json()["warnings"][0]["reason"] == "checked on the device only (a module file)"
        assert not marker.exists()

        # a 128 KiB config (a thousand modules) is checked on a thread: /healthz answers meanwhile
        many = "".join(f'[[modules]]\nname = "w{i}"\nuse = "window"\ninputs = ["s/{i}"]\n'
                       f'[modules.with]\nevery = "{i + 1}s"\n' for i in range(1400))
        assert 120_000 < len(many) <= 128 << 10
        slowest = 0.0
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pushed = pool.submit(api.post, f"/api/devices/{DEVICE}/config",
                                 json={"config": 'colour = "red"\n' + many})
            while not pushed.done():
                started = time.monotonic()
                api.get("/healthz")
                slowest = max(slowest, time.monotonic() - started)
            assert pushed.result().json()["errors"] == [{"path": "colour", "reason": "unknown key"}]
        assert slowest < 0.5, f"/healthz waited {slowest:.2f} s behind a config check"


def test_the_panel_in_a_real_browser(setup: dict[str, Any], tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.fail("Chromium is not installed: scripts/ensure-deps.sh installs Debian's chromium")
    problems: list[str] = []
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(chromium),
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_context(base_url=setup["url"]).new_page()
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.goto(f"/devices/{DEVICE}")
        page.fill("#name", USER)
        page.fill("#password", PASSWORD)
        page.click("form[action='/signin'] button")
        page.wait_for_url(f"**/devices/{DEVICE}")
        expect = playwright_api.expect
        expect(page.locator("#remote-state")).to_contain_text("Reported:")
        text = without_files(body(setup["config"])).replace('every = "1s"', 'every = "4s"')
        page.fill("#config-text", text)
        page.click("#config-form button")
        expect(page.locator("#check-result")).to_contain_text("Checked and published as v")
        expect(page.locator("#reported")).to_contain_text("applied", timeout=15_000)
        page.select_option("#command-name", "ping")
        page.click("#command-form button")
        expect(page.locator("#command-reply")).to_contain_text('"pong": true', timeout=15_000)
        page.screenshot(path=str(tmp_path / "remote-panel.png"), full_page=True)
        browser.close()
    assert problems == []  # no script error, no CSP violation

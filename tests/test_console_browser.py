"""The console in a real headless Chromium (Debian's, driven by Playwright; nothing downloaded).

One real Mosquitto and one real ``edge-cloud serve`` process for the module; devices are
simulated by publishing the real protocol (``cloud_sync.protocol``) with a real Last Will, so
that killing a device's connection makes the broker announce it offline. Screenshots are written only
when asked: ``EDGE_SCREENSHOTS=DIR`` (the README's come from the demo: ``make screenshots``).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
from argon2 import PasswordHasher

from agent import codec
from cloud_sync import protocol
from cloud_sync.server.console.users import write_users
from tests.conftest import MOSQUITTO, Broker, IngestProcess

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]' brings Playwright")
Page = playwright_api.Page
expect = playwright_api.expect

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = os.environ.get("EDGE_SCREENSHOTS")
"""A folder to save the pages in, for a person to look at; unset, a test run writes nothing."""
USER, PASSWORD = "fleet-owner", "a long enough password"
HOSTILE = ['<script>alert("xss")</script>', '"><img src=x onerror=alert(1)>']
LIVE_WITHIN = 2.0
"""Seconds within which a page shows a status (or a Will) that reached the broker."""


class SimDevice:
    """A device as the cloud sees it: retained status with a Last Will, data batches encoded by
    ``cloud_sync.protocol``, over its own MQTT connection."""

    def __init__(self, port: int, device_id: str) -> None:
        self.port = port
        self.device_id = device_id
        self.encoder = protocol.Encoder(device_id, "epoch-1", "none")
        self.seq = 0
        self.client: mqtt.Client | None = None

    def topic(self, kind: protocol.Kind) -> str:
        return protocol.topic("edge", self.device_id, kind)

    def connect(self) -> SimDevice:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{self.device_id}")
        client.will_set(self.topic("status"), protocol.encode_status({"online": False}), qos=1, retain=True)
        client.connect("127.0.0.1", self.port, keepalive=30)
        client.loop_start()
        self.client = client
        return self

    def status(self, **figures: Any) -> None:
        doc = {"online": True, "version": "0.1.0", "send_rate": 12.5, "errors": {}, "last_error": None,
               "backlog": {"rows": 0, "bytes": 0, "oldest_unsent_age_s": None}, **figures}
        self._publish(self.topic("status"), protocol.encode_status(doc), retain=True)

    def send(self, stream: str, items: list[tuple[float, dict[str, Any]]]) -> None:
        rows = []
        for ts, data in items:
            self.seq += 1
            rows.append((self.seq, stream, ts, codec.dumps(data)))
        self._publish(self.topic("data"), self.encoder.encode(rows, released=0))

    def kill(self) -> None:
        """Drop the connection without a DISCONNECT: the broker publishes the Will."""
        assert self.client is not None
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.client = None

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self.client is not None
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


# -- the running setup ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: scripts/ensure-deps.sh installs it")
    workdir = tmp_path_factory.mktemp("console")
    users = workdir / "users"
    cheap = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    write_users(users, {USER: cheap.hash(PASSWORD)})
    broker = Broker(workdir).start()
    ingest = IngestProcess(workdir, broker.url, f"sqlite:///{workdir}/cloud.db",
                           "--users", str(users), "--history-step", "0.2").start()
    devices: list[SimDevice] = []
    try:
        yield {"broker": broker, "ingest": ingest, "devices": devices, "url": f"http://127.0.0.1:{ingest.http_port}"}
    finally:
        for device in devices:
            with contextlib.suppress(Exception):
                device.close()
        ingest.stop()
        broker.stop()


def summaries(now: float, phase: int) -> list[tuple[float, dict[str, Any]]]:
    """An hour of one-minute window summaries of a slow wave."""
    out = []
    for k in range(60):
        end = now - 3600 + k * 60
        level = 21 + 3 * math.sin(k / 6 + phase)
        out.append((end, {"sensor": "t1", "start": end - 60, "end": end, "count": 60,
                          "mean": round(level, 3), "min": round(level - 2, 3), "max": round(level + 2, 3),
                          "unit": "C"}))
    return out


def alerts(now: float) -> list[tuple[float, dict[str, Any]]]:
    """What the threshold and anomaly modules emit."""
    rule = {"rule": "too-hot", "sensor": "t1", "severity": "warning", "condition": "above", "limit": 26.0}
    return [
        (now - 900, {"event": "raised", **rule, "value": 27.4, "since": now - 900}),
        (now - 600, {"event": "cleared", **rule, "value": 24.8, "raised_at": now - 900, "duration": 300.0}),
        (now - 120, {"event": "anomaly", "detector": "zscore", "type": "zscore", "sensor": "t1", "score": 4.2,
                     "value": 31.0, "threshold": 3.0}),
    ]


@pytest.fixture(scope="module")
def fleet(setup: dict[str, Any]) -> dict[str, SimDevice]:
    """Twelve gateways in different shapes, with an hour of window summaries and a few alerts."""
    now = time.time()
    devices: dict[str, SimDevice] = {}
    for i in range(1, 13):
        device = SimDevice(setup["broker"].port, f"gw-{i:02d}").connect()
        setup["devices"].append(device)
        devices[device.device_id] = device
        rows = 40 * i * i % 900
        device.status(
            version="0.1.0" if i % 4 else "0.0.9", send_rate=round(10 + i * 1.7, 1),
            config_version=f"cfg-{i}", dropped={"buffer_full": 4} if i == 7 else {},
            backlog={"rows": rows, "bytes": rows * 180, "oldest_unsent_age_s": (i * 37.0) if rows else None},
            errors={"resends": 3} if i == 5 else {},
            last_error="broker refused the batch: quota" if i == 5 else None,
        )
        device.send("win", summaries(now, i))
    devices["gw-01"].send("alerts", alerts(now))
    backlog = [0, 40, 120, 260, 410, 380, 250, 120, 30, 0]
    lag = [None, 4.0, 9.0, 15.0, 21.0, 26.0, 24.0, 12.0, 5.0, None]
    for step, (rows, age) in enumerate(zip(backlog, lag, strict=True)):  # gw-01's status history
        devices["gw-01"].status(backlog={"rows": rows, "bytes": rows * 180, "oldest_unsent_age_s": age},
                                send_rate=20.0 + step, config_version="cfg-1")
        time.sleep(0.25)
    devices["gw-12"].kill()  # one gateway offline from the start
    wait_for(lambda: len(setup["ingest"].api("/api/devices")) == 12, 10, "twelve devices at the cloud")
    return devices


@pytest.fixture(scope="module")
def browser(setup: dict[str, Any]) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed: scripts/ensure-deps.sh installs Debian's chromium")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, setup: dict[str, Any]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=setup["url"])
    opened = context.new_page()
    problems: list[str] = []
    opened.problems = problems  # type: ignore[attr-defined]
    opened.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on("console", lambda message: message.type == "error" and problems.append(message.text))
    yield opened
    context.close()


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def sign_in(page: Page, path: str = "/fleet") -> None:
    page.goto(path)
    expect(page).to_have_url("/signin?next=" + quote(path, safe=""))
    page.fill("#name", USER)
    page.fill("#password", PASSWORD)
    page.click("form[action='/signin'] button")
    page.wait_for_url(lambda url: url.endswith(path))


def row(page: Page, device_id: str) -> Any:
    return page.locator(f"tr[data-device='{device_id}']")


# -- the tests --------------------------------------------------------------------------------------


def test_without_sign_in_nothing_is_shown(
    page: Page, setup: dict[str, Any], fleet: dict[str, SimDevice]
) -> None:
    page.goto("/devices/gw-01")
    assert page.url.startswith(setup["url"] + "/signin?next=")
    assert page.locator("tr[data-device]").count() == 0
    response = page.request.get("/api/devices")
    assert response.status == 401
    response = page.request.get("/fleet", max_redirects=0)
    assert response.status == 303 and response.headers["location"].startswith("/signin")
    assert page.problems == []  # type: ignore[attr-defined]


def test_the_fleet_lists_every_device_problems_first(
    page: Page, setup: dict[str, Any], fleet: dict[str, SimDevice]
) -> None:
    sign_in(page)
    rows = page.locator("tbody tr[data-device]")
    expect(rows).to_have_count(12)
    assert rows.first.get_attribute("data-device") == "gw-12"  # offline first
    expect(row(page, "gw-12").locator(".badge")).to_have_text("offline")
    expect(row(page, "gw-03").locator(".badge")).to_have_text("online")
    expect(page.locator("#summary")).to_contain_text("12 devices")
    expect(page.locator("#summary")).to_contain_text("11 online")
    expect(page.locator("#live")).to_have_attribute("data-state", "on")
    page.fill("#q", "gw-1")  # filters as you type, without a reload
    expect(rows).to_have_count(3)  # gw-10, gw-11, gw-12
    assert "q=gw-1" in page.url
    page.fill("#q", "")
    expect(rows).to_have_count(12)
    page.click("thead a:has-text('Backlog')")
    expect(page.locator("thead th[aria-sort]")).to_contain_text("Backlog")
    first = page.locator("tbody tr[data-device]").first
    biggest = max(setup["ingest"].api("/api/devices"), key=lambda d: d["backlog"] or 0)
    assert first.get_attribute("data-device") == biggest["device_id"]
    page.goto("/fleet")
    shoot(page, "fleet.png")
    assert page.problems == []  # type: ignore[attr-defined]


# uPlot draws its axes on a canvas: the text drawn is recorded, with the canvas it went to.
RECORD_CANVAS_TEXT = """
const fillText = CanvasRenderingContext2D.prototype.fillText;
window.drawnText = [];
CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
  window.drawnText.push([this.canvas, String(text)]);
  return fillText.call(this, text, ...rest);
};
"""


def chart_text(page: Page, chart: str) -> list[str]:
    """What was drawn on the canvas now in ``chart`` (a selector), with ``RECORD_CANVAS_TEXT``."""
    return list(page.evaluate(
        "(chart) => window.drawnText.filter(([canvas]) => canvas.isConnected && canvas.closest(chart))"
        ".map(([, text]) => text)", chart,
    ))


def shoot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


def test_a_device_goes_offline_and_comes_back_live(page: Page, fleet: dict[str, SimDevice]) -> None:
    sign_in(page)
    badge = row(page, "gw-05").locator(".badge")
    expect(badge).to_have_text("online")
    expect(page.locator("#live")).to_have_attribute("data-state", "on")

    started = time.monotonic()
    fleet["gw-05"].kill()  # the broker publishes gw-05's Will
    expect(badge).to_have_text("offline", timeout=LIVE_WITHIN * 1000)
    offline_after = time.monotonic() - started

    device = fleet["gw-05"].connect()
    started = time.monotonic()
    device.status(backlog={"rows": 4321, "bytes": 777_000, "oldest_unsent_age_s": 95.0})
    expect(badge).to_have_text("online", timeout=LIVE_WITHIN * 1000)
    backlog = row(page, "gw-05").locator("td[data-label='Backlog']")
    expect(backlog).to_have_text("4,321", timeout=LIVE_WITHIN * 1000)
    online_after = time.monotonic() - started
    assert offline_after < LIVE_WITHIN and online_after < LIVE_WITHIN
    assert page.problems == []  # type: ignore[attr-defined]


def test_the_device_page_charts_its_history(page: Page, fleet: dict[str, SimDevice]) -> None:
    page.add_init_script(RECORD_CANVAS_TEXT)
    sign_in(page, "/devices/gw-01")
    expect(page.locator("h1")).to_contain_text("gw-01")
    expect(page.locator("#history-chart canvas")).to_have_count(1)
    expect(page.locator("#stream-chart canvas")).to_have_count(1)
    expect(page.locator("#stream-select")).to_have_value("win")
    expect(page.locator("#field-select")).to_have_value("mean")
    expect(page.locator("#details")).to_contain_text("too-hot")
    expect(page.locator("#details")).to_contain_text("anomaly")
    expect(page.locator(".meta")).to_contain_text("cfg-1")
    legend = page.locator("#stream-chart .u-legend")
    expect(legend).to_contain_text("win · mean · t1 (C)")  # the summaries' unit, on the axis too
    wait_for(lambda: "mean (C)" in chart_text(page, "#stream-chart"), 5, "the unit on the axis")
    page.select_option("#field-select", "max")
    expect(legend).to_contain_text("win · max · t1 (C)")
    shoot(page, "device.png")
    page.select_option("#field-select", "count")  # a count is not in the readings' unit
    expect(legend).to_contain_text("win · count · t1")
    expect(legend).not_to_contain_text("(C)")
    wait_for(lambda: "count" in chart_text(page, "#stream-chart"), 5, "the count's axis")
    assert "count (C)" not in chart_text(page, "#stream-chart")

    fleet["gw-01"].status(backlog={"rows": 999, "bytes": 9000, "oldest_unsent_age_s": 12.0})
    expect(page.locator("#figures")).to_contain_text("999", timeout=LIVE_WITHIN * 1000)
    assert page.problems == []  # type: ignore[attr-defined]


def test_hostile_device_strings_are_shown_as_text(
    page: Page, setup: dict[str, Any], fleet: dict[str, SimDevice]
) -> None:
    device = SimDevice(setup["broker"].port, "gw-hostile").connect()
    setup["devices"].append(device)
    device.status(version=HOSTILE[0], last_error=HOSTILE[1], config_version=HOSTILE[1],
                  errors={HOSTILE[0]: 1}, dropped={HOSTILE[1]: 2})
    device.send(HOSTILE[0], [(time.time(), {"sensor": HOSTILE[1], HOSTILE[1]: 1.5, "mean": 2.0})])
    device.send("alerts", [(time.time(), {"event": "raised", "sensor": HOSTILE[0], "rule": HOSTILE[1]})])
    bad_id = SimDevice(setup["broker"].port, "ok-id").connect()  # a device id no page may carry
    setup["devices"].append(bad_id)
    bad_id._publish(f"edge/{HOSTILE[0]}/status", protocol.encode_status({"online": True}), retain=False)
    wait_for(lambda: any(d["device_id"] == "gw-hostile" for d in setup["ingest"].api("/api/devices")), 10,
             "the hostile device at the cloud")

    sign_in(page, "/fleet?q=hostile")
    expect(row(page, "gw-hostile").locator("td[data-label='Version']")).to_have_text(HOSTILE[0])
    page.goto("/devices/gw-hostile")
    expect(page.locator("#details")).to_contain_text(HOSTILE[1])
    expect(page.locator(".meta")).to_contain_text(HOSTILE[0])
    expect(page.locator("#stream-select option")).to_have_count(1)
    expect(page.locator("#stream-select")).to_have_value(HOSTILE[0])  # an option's text, not markup
    expect(page.locator("#stream-chart .u-legend")).to_contain_text(HOSTILE[0])
    page.goto("/fleet")
    expect(page.locator("tbody tr[data-device]")).to_have_count(13)  # no row for the bad id
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert page.problems == []  # type: ignore[attr-defined]  # no dialog, no error, no CSP report

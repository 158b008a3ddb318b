"""The console during a real outage and after it, in Debian's Chromium: the demo itself runs
(brokers, ingest, three agents, sensors) and cuts one gateway's link to the cloud.

While the link is cut, the gateway's row is offline and its backlog and send rate are marked as
the last report's, with that report's age; once the link is back, the row's last-hour sparkline
still shows the outage (a shaded offline span). The phone layout keeps the table readable.
With ``EDGE_SCREENSHOTS=DIR`` the pages are saved there (``make screenshots`` writes the
README's from this test).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]' brings Playwright")
expect = playwright_api.expect

from tests.test_console_browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    RECORD_CANVAS_TEXT,
    chart_text,
    shoot,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.timeout(400)]
CUT_AFTER, CUT_FOR = 25, 30
CUT = "gw-c"


class Demo:
    """``edge-sim demo`` as a child process; its printed lines collected as they come.

    The demo picks the console's port itself (a port picked here and let go could be taken by
    another test before the console binds it) and prints it with the sign-in."""

    def __init__(self, folder: Path) -> None:
        self.port = 0
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-sim"), "demo", "--keep", str(folder),
             "--cut-after", str(CUT_AFTER), "--cut-for", str(CUT_FOR)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_console(self, timeout: float) -> str:
        """The sign-in password, once the demo says its console answers; ``port`` is then set."""
        found = self.wait_line(r"Console:\s+http://127\.0\.0\.1:(\d+)/\s+sign in as\s+demo / (\S+)", timeout)
        self.port = int(found.group(1))
        return found.group(2)

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if self.process.poll() is not None:
                raise AssertionError("the demo stopped:\n" + "".join(self.lines))
            time.sleep(0.1)
        raise TimeoutError(f"{pattern!r} not printed by the demo in {timeout} s:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path / "demo")
    yield running
    running.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed: scripts/ensure-deps.sh installs Debian's chromium")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def signed_in(browser: Any, demo: Demo, password: str, viewport: dict[str, int], **extra: Any) -> Any:
    context = browser.new_context(viewport=viewport, base_url=f"http://127.0.0.1:{demo.port}", **extra)
    page = context.new_page()
    page.goto("/fleet")
    page.fill("#name", "demo")
    page.fill("#password", password)
    page.click("form[action='/signin'] button")
    page.wait_for_url(lambda url: url.endswith("/fleet"))
    return page


def too_wide(page: Any, width: int = 390) -> list[str]:
    """The innermost elements that reach past ``width`` (a phone's screen)."""
    return list(page.evaluate(
        "(width) => [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > "
        "width + 1 && e.children.length === 0).slice(0, 5)"
        ".map((e) => `${e.tagName.toLowerCase()}.${e.className}: ${(e.textContent || '').slice(0, 40)}`)",
        width,
    ))


def test_the_fleet_page_during_a_real_cut_and_after_it(demo: Demo, browser: Any) -> None:
    password = demo.wait_console(90)
    page = signed_in(browser, demo, password, {"width": 1400, "height": 900})
    row = page.locator(f"tr[data-device='{CUT}']")
    expect(row.locator(".badge")).to_have_text("online", timeout=30_000)

    demo.wait_line(rf"link of {CUT} cut", CUT_AFTER + 30)
    expect(row.locator(".badge")).to_have_text("offline", timeout=20_000)  # its Will, within ~1.5 keepalives
    backlog = row.locator("td[data-label='Backlog']")
    expect(backlog).to_have_class(re.compile(r"\bstale\b"))
    expect(backlog.locator(".as-of")).to_contain_text(re.compile(r"as of .* ago"))
    expect(row.locator("td[data-label='Send rate'] .as-of")).to_contain_text("was ")
    for other in ("gw-a", "gw-b"):  # the others' figures are live, not marked
        expect(page.locator(f"tr[data-device='{other}'] td[data-label='Backlog'] .as-of")).to_have_count(0)
    time.sleep(5)  # the cut gateway's offline span reaches its history
    page.reload()
    shoot(page, "fleet-outage.png")

    phone = signed_in(browser, demo, password, {"width": 390, "height": 844}, is_mobile=True,
                      device_scale_factor=2)
    phone_row = phone.locator(f"tr[data-device='{CUT}']")
    expect(phone_row.locator(".badge")).to_have_text("offline")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 1, f"the phone page scrolls sideways ({width} px): {too_wide(phone)}"
    shoot(phone, "fleet-phone.png")

    demo.wait_line(rf"link of {CUT} restored", CUT_FOR + 30)
    expect(row.locator(".badge")).to_have_text("online", timeout=30_000)
    expect(row.locator("td[data-label='Backlog'] .as-of")).to_have_count(0, timeout=10_000)
    time.sleep(12)  # it catches up; two history steps record it
    page.reload()
    spark = row.locator("td[data-label='Last hour'] svg.spark")
    expect(spark).to_have_count(1)
    assert spark.locator("rect.spark-off").count() >= 1, "the outage is not in the last hour's sparkline"
    assert "offline for a while" in (spark.get_attribute("aria-label") or "")
    shoot(page, "fleet.png")

    page.add_init_script(RECORD_CANVAS_TEXT)
    page.goto(f"/devices/{CUT}")
    expect(page.locator("h1")).to_contain_text(CUT)
    expect(page.locator("#history-chart canvas")).to_have_count(1)
    # one series per sensor, picked by name, its unit on the axis when the records carry one
    expect(page.locator("#sensor-select option")).not_to_have_count(0)
    sensors = page.locator("#sensor-select option").all_inner_texts()
    assert len(sensors) > 1 and "(all)" not in sensors, sensors
    page.select_option("#stream-select", "changes")
    power = next(s for s in page.locator("#sensor-select option").all_inner_texts() if s.startswith("power"))
    page.select_option("#sensor-select", power)
    expect(page.locator("#stream-chart .u-legend")).to_contain_text(f"changes · value · {power} (W)")
    expect(page.locator("#stream-chart .u-axis")).not_to_have_count(0)
    page.select_option("#stream-select", "summary_10s")  # the window module's: the readings' unit
    expect(page.locator("#sensor-select")).to_have_value(power)
    expect(page.locator("#stream-chart .u-legend")).to_contain_text(f"summary_10s · mean · {power} (W)")
    deadline = time.monotonic() + 5
    while "mean (W)" not in chart_text(page, "#stream-chart"):
        assert time.monotonic() < deadline, chart_text(page, "#stream-chart")
        time.sleep(0.1)
    time.sleep(2)
    shoot(page, "device.png")

    phone.goto(f"/devices/{CUT}")
    expect(phone.locator("#history-chart canvas")).to_have_count(1)
    plot = phone.locator("#history-chart .u-over").bounding_box()
    assert plot is not None and plot["width"] >= 250, f"the phone's backlog chart is {plot}"
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 1, f"the phone's device page scrolls sideways ({width} px): {too_wide(phone)}"
    shoot(phone, "device-phone.png")

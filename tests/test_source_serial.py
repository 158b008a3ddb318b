"""The serial source over a socat pty pair: JSON, text and regex lines, bad lines counted, and a
device that disappears (socat killed, like an unplugged USB adapter) and comes back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.source_harness import SourceRun, run_source
from tests.modbus_helpers import PtyPair
from tests.source_helpers import run_agent

T0 = 1_700_000_000.0


class Device:
    """The far end of the pair: what the sensor board would write."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pair = PtyPair(folder)
        self.fd = os.open(self.pair.b, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def unplug(self) -> None:
        os.close(self.fd)
        self.pair.close()
        for link in (self.pair.a, self.pair.b):
            Path(link).unlink(missing_ok=True)

    def plug(self) -> None:
        self.pair = PtyPair(self.folder)
        self.fd = os.open(self.pair.b, os.O_RDWR | os.O_NOCTTY)


def values(run: SourceRun) -> list[tuple[str, float]]:
    return [(r.data["sensor"], r.data["value"]) for r in run.records]


def test_regex_lines_with_crlf_and_a_device_that_is_unplugged_and_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("agent.runtime.source_runner.RESTART_FIRST", 0.05)
    device = Device(tmp_path)
    steps = iter([
        lambda: device.write(b"T1=21.50C\r\nnoise\r\nT2=19.25C\r\n"),
        device.unplug,
        device.plug,
        lambda: device.write(b"T1=22.00C\r\n"),
    ])
    last = [0.0]

    def step(run: SourceRun) -> bool:
        if time.monotonic() - last[0] >= 0.4:
            last[0] = time.monotonic()
            move = next(steps, None)
            if move is not None:
                move()
        return len(run.records) >= 3

    config = {"port": device.pair.a, "baudrate": 115200, "line_ending": "\r\n", "format": "regex",
              "pattern": r"^(?P<sensor>T\d)=(?P<value>-?[\d.]+)(?P<unit>C)$"}
    try:
        run = run_source("serial", config, until=step, timeout=15)
    finally:
        device.unplug()
    assert values(run) == [("T1", 21.5), ("T2", 19.25), ("T1", 22.0)]
    assert run.records[0].data["unit"] == "C"
    assert run.dropped == {"no_match": 1}
    assert run.counters["restarts"] >= 1


def once_open(device: Device, data: bytes):  # written once the port is open: nobody reads before
    written: list[bool] = []

    def step(run: SourceRun) -> bool:
        if run.health.get("connected") and not written:
            device.write(data)
            written.append(True)
        return bool(run.records) and bool(written)

    return step


def test_json_and_text_lines(tmp_path: Path) -> None:
    device = Device(tmp_path)
    try:
        run = run_source("serial", {"port": device.pair.a}, timeout=5, until=once_open(
            device, b'{"sensor": "a", "value": 1.5, "ts": 1700000000}\n{"sensor": "a"}\n'))
        assert values(run) == [("a", 1.5)] and run.records[0].ts == T0 and run.dropped == {"no_value": 1}
        run = run_source("serial", {"port": device.pair.a, "format": "text", "line_ending": "\r"},
                         until=once_open(device, b"b 7 1700000001\r"), timeout=5)
    finally:
        device.unplug()
    assert values(run) == [("b", 7.0)] and run.records[0].ts == T0 + 1


@pytest.mark.integration
def test_serial_readings_reach_window_summaries(tmp_path: Path) -> None:
    device = Device(tmp_path)
    sources = f"""
    [[sources]]
    name = "board"
    type = "serial"
    port = "{device.pair.a}"
    baudrate = 115200
    format = "text"
    """

    def during(agent) -> None:
        agent.wait_for_log("reading ")
        device.write(b"".join(f"s {n} {T0 + n}\n".encode() for n in range(200)) + b"garbage line here x\n")
        time.sleep(1.0)

    try:
        windows, status = run_agent(tmp_path, sources, during)
    finally:
        device.unplug()
    assert windows["s"]["count"] == 200 and windows["s"]["sum"] == sum(range(200))
    assert status["sources"]["board"]["dropped"] == {"not_sensor_value_ts": 1}

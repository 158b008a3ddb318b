"""The serial source over a socat pty pair: JSON, text and regex lines, bad lines counted, and a
device that disappears (socat killed, like an unplugged USB adapter) and comes back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.source_harness import SourceRun, run_source
from tests.modbus_helpers import PtyPair
from tests.source_helpers import run_agent, wait_for_sources

T0 = 1_700_000_000.0


class Device:
    """The far end of the pair: what the sensor board would write."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pair = PtyPair(folder)
        self.fd: int | None = os.open(self.pair.b, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, data)

    def unplug(self) -> None:
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
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
    phase = [0]

    def step(run: SourceRun) -> bool:  # each move once the source is ready for it, not by time
        connected, restarts = run.health.get("connected"), run.counters.get("restarts", 0)
        if phase[0] == 0 and connected:
            device.write(b"T1=21.50C\r\nnoise\r\nT2=19.25C\r\n")
        elif phase[0] == 1 and len(run.records) >= 2:
            device.unplug()
        elif phase[0] == 2 and restarts >= 1 and not connected:
            device.plug()
        elif phase[0] == 3 and connected:  # opened again
            device.write(b"T1=22.00C\r\n")
        else:
            return len(run.records) >= 3
        phase[0] += 1
        return False

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
def test_serial_readings_reach_window_summaries_while_another_port_is_unplugged(tmp_path: Path) -> None:
    device, flaky = Device(tmp_path / "board"), Device(tmp_path / "flaky")
    sources = f"""
    [[sources]]
    name = "board"
    type = "serial"
    port = "{device.pair.a}"
    baudrate = 115200
    format = "text"

    [[sources]]
    name = "flaky"
    type = "serial"
    port = "{flaky.pair.a}"
    format = "text"
    """

    def lines(sensor: str, numbers: range) -> bytes:
        return b"".join(f"{sensor} {n} {T0 + n}\n".encode() for n in numbers)

    def during(agent) -> None:
        agent.wait_for_log(f"reading {device.pair.a}")
        agent.wait_for_log(f"reading {flaky.pair.a}")
        device.write(lines("s", range(100)) + b"garbage line here x\n")
        flaky.write(lines("f", range(5)) + b"f not-a-number\n")
        wait_for_sources(data, lambda s: s["flaky"].get("accepted") == 5, "flaky's five readings")
        flaky.unplug()  # the USB adapter pulled out: reopened with backoff, named in status
        wait_for_sources(data, lambda s: s["flaky"].get("restarts", 0) >= 2
                         and s["flaky"].get("connected") is False
                         and flaky_port in (s["flaky"].get("last_error") or ""), "flaky named in status")
        device.write(lines("s", range(100, 200)))  # the other port carries on
        wait_for_sources(data, lambda s: s["board"].get("accepted") == 200
                         and s["board"].get("connected") is True, "board's 200 readings")

    data, flaky_port = tmp_path / "data", flaky.pair.a
    try:
        windows, status = run_agent(tmp_path, sources, during)
    finally:
        device.unplug()
        flaky.unplug()
    assert windows["s"]["count"] == 200 and windows["s"]["sum"] == sum(range(200))
    assert windows["f"]["count"] == 5 and windows["f"]["sum"] == sum(range(5))
    assert status["sources"]["board"]["dropped"] == {"not_sensor_value_ts": 1}
    assert "restarts" not in status["sources"]["board"]
    assert status["sources"]["flaky"]["dropped"] == {"not_sensor_value_ts": 1}
    assert status["sources"]["flaky"]["restarts"] >= 2

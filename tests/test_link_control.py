"""``edge-sim link`` as a process: commands, the control port, the schedule, loopback only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from simulators.addresses import AddressError, broker_address, host_port, require_loopback
from simulators.link_control import send_command
from simulators.link_state import LinkMode, LinkState, parse_state
from simulators.schedule import Step, parse_schedule
from tests.conftest import Broker, free_port, wait_for_port

SIM = [sys.executable, "-m", "simulators"]


@pytest.mark.parametrize(
    ("command", "state"),
    [
        ("pass", LinkState()),
        ("HALFOPEN", LinkState(LinkMode.HALFOPEN)),
        ("drop", LinkState(LinkMode.DROP)),
        ("delay 250", LinkState(LinkMode.DELAY, delay_ms=250)),
        ("delay=0", LinkState(LinkMode.DELAY, delay_ms=0)),
        ("throttle 5000", LinkState(LinkMode.THROTTLE, rate=5000)),
    ],
)
def test_commands_parse(command, state):
    assert parse_state(command) == state


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", "empty"),
        ("cut", "unknown mode"),
        ("delay", "usage: delay MS"),
        ("pass 3", "usage: pass"),
        ("delay soon", "not a number"),
        ("delay -5", ">= 0"),
        ("throttle 0", "> 0"),
    ],
)
def test_bad_commands_say_why(command, message):
    with pytest.raises(ValueError, match=message):
        parse_state(command)


def test_schedules_parse_in_time_order():
    assert parse_schedule("90:pass, 60:halfopen,120:delay=200") == [
        Step(60, "halfopen"), Step(90, "pass"), Step(120, "delay=200")]
    assert parse_schedule("") == []
    for bad in ("halfopen", "x:pass", "-1:pass", "5:"):
        with pytest.raises(ValueError, match="SECONDS:COMMAND"):
            parse_schedule(bad)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884)),
        ("mqtt://localhost", ("localhost", 1883)),
        ("127.0.0.1:1999", ("127.0.0.1", 1999)),
        ("tcp://[::1]:1885", ("::1", 1885)),
    ],
)
def test_broker_urls(text, address):
    assert broker_address(text) == address


def test_addresses_that_cannot_be_used():
    for bad in ("mqtts://host:8883", "mqtt://:1883", "mqtt://h:99999"):
        with pytest.raises(AddressError):
            broker_address(bad)
    assert host_port(":7000") == ("127.0.0.1", 7000)
    with pytest.raises(AddressError):
        host_port("nowhere")
    require_loopback("127.0.0.2", "x")
    require_loopback("::1", "x")
    for outside in ("0.0.0.0", "192.168.1.5", "example.com"):
        with pytest.raises(AddressError, match="loopback only"):
            require_loopback(outside, "listen address")


@pytest.mark.integration
def test_the_command_line_proxy_obeys_its_control_port_and_schedule(broker: Broker, tmp_path):
    listen, control = free_port(), free_port()
    log = (tmp_path / "link.log").open("wb")
    process = subprocess.Popen(
        [*SIM, "link", "--listen", f"127.0.0.1:{listen}", "--target", f"127.0.0.1:{broker.port}",
         "--control", f"127.0.0.1:{control}", "--schedule", "1.5:halfopen"],
        stdout=log, stderr=log,
    )
    try:
        wait_for_port(control)
        started = time.monotonic()
        assert _status(control)["mode"] == "pass"
        wait_for_port(listen)
        while _status(control)["mode"] != "halfopen":
            assert time.monotonic() - started < 5, "the schedule never switched"
            time.sleep(0.1)
        assert send_command(("127.0.0.1", control), "delay 100").startswith("ok")
        answer = subprocess.run([*SIM, "linkctl", f"127.0.0.1:{control}", "throttle", "9000"],
                                capture_output=True, text=True, timeout=20)
        assert answer.returncode == 0 and json.loads(answer.stdout[3:])["rate"] == 9000
        wrong = subprocess.run([*SIM, "linkctl", f"127.0.0.1:{control}", "sideways"],
                               capture_output=True, text=True, timeout=20)
        assert wrong.returncode == 1 and wrong.stdout.startswith("error unknown mode")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_the_command_line_refuses_a_non_loopback_listener():
    out = subprocess.run([*SIM, "link", "--listen", "0.0.0.0:7999", "--target", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2 and "loopback only" in out.stderr


def _status(control: int) -> dict[str, object]:
    answer = send_command(("127.0.0.1", control), "status")
    assert answer.startswith("ok ")
    return dict(json.loads(answer[3:]))

"""The modbus source against pymodbus's own server: Modbus TCP on a loopback port, RTU over a
socat pty pair. Exact values through every type and word order, contiguous registers in one
request, timeouts and exception codes counted by reason while the other devices carry on."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from agent.source_harness import SourceRun, run_source
from agent.sources.modbus_map import RegisterConfig, block_values, decode, plan_blocks
from tests.modbus_helpers import ModbusTestServer, PtyPair, words_of_float32
from tests.source_helpers import run_agent


def words(fmt: str, value: float, order: str) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    if order in ("CDAB", "DCBA"):
        raw = b"".join(raw[i : i + 2] for i in range(len(raw) - 2, -1, -2))
    if order in ("BADC", "DCBA"):
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


@pytest.mark.parametrize("order", ["ABCD", "DCBA", "BADC", "CDAB"])
@pytest.mark.parametrize(
    ("kind", "fmt", "value"),
    [("int16", "h", -1234), ("uint16", "H", 65000), ("int32", "i", -70000), ("uint32", "I", 4_000_000_000),
     ("float32", "f", 229.5), ("float64", "d", -1.0e10 / 3)],
)
def test_every_type_in_every_word_order(order: str, kind: str, fmt: str, value: float) -> None:
    register = RegisterConfig.model_validate(
        {"name": "x", "address": 0, "type": kind, "order": order, "scale": 2.0, "offset": 1.0}
    )
    assert decode(words(fmt, value, order), register) == pytest.approx(value * 2.0 + 1.0)


def test_contiguous_registers_share_a_request_up_to_the_protocol_limit() -> None:
    regs = [RegisterConfig.model_validate(r) for r in [
        {"name": "a", "address": 0, "type": "float32"}, {"name": "b", "address": 2},
        {"name": "c", "address": 3, "type": "float64"}, {"name": "d", "address": 10},
        {"name": "e", "address": 0, "kind": "input"}, {"name": "f", "address": 5, "kind": "coil"},
        {"name": "g", "address": 6, "kind": "coil"}, {"name": "h", "address": 200},
        {"name": "i", "address": 320},
    ]]
    blocks = [(b.kind, b.address, b.count, [r.name for _, r in b.values]) for b in plan_blocks(regs)]
    assert blocks == [("holding", 0, 7, ["a", "b", "c"]), ("holding", 10, 1, ["d"]),
                      ("holding", 200, 1, ["h"]), ("holding", 320, 1, ["i"]),
                      ("input", 0, 1, ["e"]), ("coil", 5, 2, ["f", "g"])]
    assert [(b.address, b.count) for b in plan_blocks(regs, max_gap=3)][:2] == [(0, 11), (200, 1)]
    assert [b.count for b in plan_blocks(
        [RegisterConfig(name=f"r{n}", address=n) for n in range(300)])] == [125, 125, 50]


METER = {"hr": [*words_of_float32(230.5), *words("f", 4.25, "CDAB"), *words("i", -70000, "ABCD"), 42,
                struct.unpack(">H", struct.pack(">h", -215))[0]],
         "ir": [1234], "co": [1, 0, 1]}
REGISTERS = [
    {"name": "voltage", "address": 0, "kind": "holding", "type": "float32", "unit": "V"},
    {"name": "current", "address": 2, "type": "float32", "order": "CDAB", "unit": "A"},
    {"name": "energy", "address": 4, "type": "int32", "scale": 0.001, "unit": "kWh"},
    {"name": "count", "address": 6},
    {"name": "temp", "address": 7, "type": "int16", "scale": 0.1, "unit": "C"},
    {"name": "flow", "address": 0, "kind": "input", "scale": 0.01},
    {"name": "pump", "address": 0, "kind": "coil"},
    {"name": "valve", "address": 1, "kind": "coil"},
]
EXPECTED = {
    "meter/voltage": 230.5, "meter/current": 4.25, "meter/energy": -70.0, "meter/count": 42,
    "meter/temp": -21.5, "meter/flow": 12.34, "meter/pump": 1, "meter/valve": 0,
}


def by_sensor(run: SourceRun) -> dict[str, list[float]]:
    seen: dict[str, list[float]] = {}
    for record in run.records:
        seen.setdefault(record.data["sensor"], []).append(record.data["value"])
    return seen


def test_tcp_several_devices_exact_values_and_faults_by_reason(tmp_path: Path) -> None:
    server = ModbusTestServer({1: METER, 2: {"hr": [7]}, 3: {"hr": [1]}})
    port = server.start_tcp()
    server.delay[3] = 1.0  # answers too late
    try:
        config = {"url": f"modbus+tcp://127.0.0.1:{port}", "timeout": 0.3, "devices": [
            {"name": "meter", "unit": 1, "interval": 0.2, "registers": REGISTERS},
            {"name": "other", "unit": 2, "interval": 0.2, "registers": [
                {"name": "x", "address": 0}, {"name": "missing", "address": 50}]},
            {"name": "slow", "unit": 3, "interval": 0.5, "registers": [{"name": "x", "address": 0}]},
        ]}
        run = run_source("modbus", config, timeout=8,
                         until=lambda run: len(by_sensor(run).get("meter/count", [])) >= 3)
    finally:
        server.stop()
    seen = by_sensor(run)
    for sensor, value in EXPECTED.items():
        assert seen[sensor][0] == pytest.approx(value), sensor
    meter = [r for r in run.records if r.data["sensor"] == "meter/voltage"]
    assert meter[0].topic == "sensors/meter/voltage" and meter[0].data["unit"] == "V"
    assert len(seen["other/x"]) >= 2 and "other/missing" not in seen and "slow/x" not in seen
    assert run.counters["errors.exception_2"] >= 2
    assert run.counters["errors.timeout"] >= 1
    assert run.health["connected"] is True


def test_tcp_values_that_change_and_a_server_that_goes_away(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("agent.runtime.source_runner.RESTART_FIRST", 0.05)
    server = ModbusTestServer({1: {"hr": [10]}})
    port = server.start_tcp()
    config = {"url": f"modbus+tcp://127.0.0.1:{port}", "timeout": 0.2, "devices": [
        {"name": "d", "unit": 1, "interval": 0.1, "registers": [{"name": "v", "address": 0}]}]}
    stopped: list[bool] = []

    def step(run: SourceRun) -> bool:
        values = by_sensor(run).get("d/v", [])
        if len(values) == 2:
            server.set(1, "h", 0, [11])
        if 11 in values and not stopped:
            server.stop()
            stopped.append(True)
        return bool(stopped) and run.counters.get("restarts", 0) >= 1

    run = run_source("modbus", config, until=step, timeout=10)
    values = by_sensor(run)["d/v"]
    assert values[:2] == [10, 10] and 11 in values
    assert run.health["connected"] is False and "127.0.0.1" in run.health["last_error"]


def test_rtu_over_a_pty_pair(tmp_path: Path) -> None:
    pty = PtyPair(tmp_path)
    server = ModbusTestServer({1: METER, 5: {"hr": [99]}})
    server.start_rtu(pty.b, baudrate=19200)
    try:
        config = {"url": f"modbus+rtu://{pty.a}?baudrate=19200&parity=N", "timeout": 0.5, "devices": [
            {"name": "meter", "unit": 1, "interval": 0.3, "registers": REGISTERS},
            {"name": "pump", "unit": 5, "interval": 0.3, "registers": [{"name": "speed", "address": 0}]},
            {"name": "absent", "unit": 9, "interval": 0.5, "registers": [{"name": "x", "address": 0}]},
        ]}
        run = run_source("modbus", config, timeout=10,
                         until=lambda run: len(by_sensor(run).get("pump/speed", [])) >= 2)
    finally:
        server.stop()
        pty.close()
    seen = by_sensor(run)
    for sensor, value in EXPECTED.items():
        assert seen[sensor][0] == pytest.approx(value), sensor
    assert seen["pump/speed"][:2] == [99, 99]
    assert "absent/x" not in seen  # pymodbus's server refuses an unknown unit; a real line is silent
    assert run.counters.get("errors.exception_4", 0) + run.counters.get("errors.timeout", 0) >= 1


@pytest.mark.integration
def test_modbus_readings_reach_window_summaries_while_a_device_times_out(tmp_path: Path) -> None:
    server = ModbusTestServer({1: METER, 3: {"hr": [1]}})
    port = server.start_tcp()
    server.delay[3] = 1.0
    registers = ", ".join(
        "{ " + ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in r.items()) + " }" for r in REGISTERS
    )
    sources = f"""
    [[sources]]
    name = "plc"
    type = "modbus"
    url = "modbus+tcp://127.0.0.1:{port}"
    timeout = "300ms"
    [[sources.devices]]
    name = "meter"
    unit = 1
    interval = "200ms"
    registers = [ {registers} ]
    [[sources.devices]]
    name = "slow"
    unit = 3
    interval = "1s"
    registers = [ {{ name = "x", address = 0 }} ]

    [[sources]]
    name = "sim"
    type = "simulator"
    sensors = 1
    rate = 10
    """
    try:
        windows, status = run_agent(tmp_path, sources, lambda agent: time.sleep(2.5))
    finally:
        server.stop()
    for sensor, value in EXPECTED.items():
        assert (windows[sensor]["min"], windows[sensor]["max"]) == (pytest.approx(value),) * 2
    counts = {windows[sensor]["count"] for sensor in EXPECTED}
    assert len(counts) == 1 and counts.pop() >= 5  # every register of a poll, every poll
    assert "slow/x" not in windows and windows["sim-0"]["count"] >= 10
    plc = status["sources"]["plc"]
    assert plc["errors"]["timeout"] >= 1
    assert plc["accepted"] == sum(windows[sensor]["count"] for sensor in EXPECTED)


def test_rtu_replies_with_a_bad_crc_are_counted_as_crc(tmp_path: Path) -> None:
    """Client and server on two pty pairs, bridged by a relay that garbles the server's first
    replies (one byte flipped): the CRC fails, the reply is not taken, the fault is named."""
    import os
    import select
    import threading

    left, right = PtyPair(tmp_path / "l"), PtyPair(tmp_path / "r")
    server = ModbusTestServer({1: {"hr": [321]}})
    server.start_rtu(right.a, baudrate=19200)
    to_client, to_server = os.open(left.b, os.O_RDWR | os.O_NOCTTY), os.open(right.b, os.O_RDWR | os.O_NOCTTY)
    garble = [3]
    running = [True]

    def relay() -> None:
        while running[0]:
            ready, _, _ = select.select([to_client, to_server], [], [], 0.1)
            for fd in ready:
                data = os.read(fd, 4096)
                if fd == to_server and garble[0] > 0:
                    garble[0] -= 1
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                os.write(to_server if fd == to_client else to_client, data)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        config = {"url": f"modbus+rtu://{left.a}?baudrate=19200", "timeout": 0.3, "devices": [
            {"name": "d", "unit": 1, "interval": 0.2, "registers": [{"name": "v", "address": 0}]}]}
        run = run_source("modbus", config, timeout=10, until=lambda run: len(run.records) >= 2)
    finally:
        running[0] = False
        thread.join(5)
        server.stop()
        for fd in (to_client, to_server):
            os.close(fd)
        left.close()
        right.close()
    assert [r.data["value"] for r in run.records[:2]] == [321, 321]
    assert run.counters["errors.crc"] >= 1


def test_a_block_unpacked_at_once_gives_what_each_register_gives_alone() -> None:
    regs = [RegisterConfig.model_validate(r) for r in [
        {"name": "f", "address": 0, "type": "float32", "scale": 0.5, "offset": 1.0},
        {"name": "i", "address": 3, "type": "int16"}, {"name": "d", "address": 4, "type": "float64"},
        {"name": "u", "address": 8, "type": "uint32", "scale": 10.0},
    ]]
    data = [*words("f", 229.5, "ABCD"), 7, *words("h", -5, "ABCD"), *words("d", -1e10 / 3, "ABCD"),
            *words("I", 4_000_000_000, "ABCD")]
    swapped = [regs[0].model_copy(update={"order": "CDAB"}), *regs[1:]]
    for registers, block_words in ((regs, data), (swapped, [data[1], data[0], *data[2:]])):
        [block] = plan_blocks(registers, max_gap=1)
        assert (block.layout is None) == (registers is swapped)
        alone = [decode(block_words[o : o + r.width], r) for o, r in block.values]
        assert block_values(block, block_words) == alone == [229.5 * 0.5 + 1.0, -5.0, -1e10 / 3, 4e10]

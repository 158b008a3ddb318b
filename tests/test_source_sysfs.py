"""The sysfs source on a fake tree with real file semantics: 1-Wire (w1_slave with its CRC line,
and the newer temperature file), hwmon, thermal zones, IIO; a CRC failure, a value that changes,
a sensor that disappears."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from agent.health.status import read_status
from agent.source_harness import SourceRun, run_source
from agent.sources.sysfs import read_all
from tests.source_helpers import run_agent

W1_OK = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t={milli}\n"
W1_BAD = "72 01 4b 46 7f ff 0e 10 57 : crc=12 NO\n72 01 4b 46 7f ff 0e 10 57 t=85000\n"


def put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_tree(root: Path) -> Path:
    sys = root / "sys"
    w1 = sys / "bus/w1/devices"
    put(w1 / "28-0000075a1b2c/w1_slave", W1_OK.format(milli=23125))
    put(w1 / "28-00000bad0001/w1_slave", W1_BAD)
    put(w1 / "28-0000000new01/temperature", "19500\n")
    put(w1 / "w1_bus_master1/w1_master_slaves", "28-0000075a1b2c\n")
    put(w1 / "01-000000000001/id", "x")  # a family that is no thermometer: no file to read
    put(sys / "class/hwmon/hwmon0/name", "cpu_thermal\n")
    put(sys / "class/hwmon/hwmon0/temp1_input", "45277\n")
    put(sys / "class/hwmon/hwmon1/name", "nct6775\n")
    put(sys / "class/hwmon/hwmon1/in0_input", "1208\n")
    put(sys / "class/hwmon/hwmon1/fan2_input", "1450\n")
    put(sys / "class/hwmon/hwmon1/temp1_label", "SYSTIN\n")
    put(sys / "class/thermal/thermal_zone0/type", "cpu-thermal\n")
    put(sys / "class/thermal/thermal_zone0/temp", "47000\n")
    iio = sys / "bus/iio/devices/iio:device0"
    put(iio / "name", "bme280\n")
    put(iio / "in_humidityrelative_raw", "48213\n")
    put(iio / "in_humidityrelative_scale", "1\n")
    put(iio / "in_voltage0_raw", "1000\n")
    put(iio / "in_voltage_scale", "0.5\n")
    return root


EXPECTED = {
    "w1/28-0000075a1b2c": (23.125, "C"),
    "w1/28-0000000new01": (19.5, "C"),
    "hwmon/cpu_thermal/temp1": (45.277, "C"),
    "hwmon/nct6775/in0": (1.208, "V"),
    "hwmon/nct6775/fan2": (1450.0, "rpm"),
    "thermal/cpu-thermal": (47.0, "C"),
    "iio/bme280/humidityrelative": (48.213, "%"),
    "iio/bme280/voltage0": (0.5, "V"),
}


def test_every_family_is_read_with_its_unit_and_a_crc_failure_is_refused(tmp_path: Path) -> None:
    found, faults = read_all(fake_tree(tmp_path), ("w1", "hwmon", "thermal", "iio"))
    assert {f.sensor: (pytest.approx(f.value), f.unit) for f in found} == EXPECTED
    assert [(fault.reason, "28-00000bad0001" in fault.detail) for fault in faults] == [("crc", True)]


def test_values_change_sensors_disappear_and_the_rest_carry_on(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    hwmon = root / "sys/class/hwmon/hwmon0/temp1_input"
    moves = iter([
        lambda: hwmon.write_text("50000\n"),
        lambda: shutil.rmtree(root / "sys/bus/w1/devices/28-0000075a1b2c"),
    ])

    made: list[object] = []

    def step(run: SourceRun) -> bool:  # after each poll's readings arrive, change the tree
        polls = len([r for r in run.records if r.data["sensor"] == "thermal/cpu-thermal"])
        if polls == len(made) + 1:
            move = next(moves, None)
            made.append(move)
            if move is not None:
                move()
        return polls >= 3

    run = run_source("sysfs", {"root": str(root), "interval": 0.2}, until=step, timeout=10)
    by_sensor: dict[str, list[float]] = {}
    for record in run.records:
        by_sensor.setdefault(record.data["sensor"], []).append(record.data["value"])
        assert record.topic == "sensors/" + record.data["sensor"]
    assert by_sensor["hwmon/cpu_thermal/temp1"][:3] == [45.277, 50.0, 50.0]
    assert by_sensor["w1/28-0000075a1b2c"] == [23.125, 23.125]  # gone before the third poll
    assert len(by_sensor["thermal/cpu-thermal"]) == 3
    assert run.counters["errors.crc"] == 3
    assert run.health["connected"] is True


def test_include_exclude_and_an_empty_tree(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    run = run_source("sysfs", {"root": str(root), "interval": 0.1, "include": ["w1/*", "thermal/*"],
                               "exclude": ["w1/*new*"]}, until=lambda run: run.records, timeout=5)
    assert {r.data["sensor"] for r in run.records} == {"w1/28-0000075a1b2c", "thermal/cpu-thermal"}
    empty = run_source("sysfs", {"root": str(tmp_path / "nothing"), "interval": 0.05}, timeout=0.3)
    assert empty.records == [] and "no sensors under" in empty.health["last_error"]


@pytest.mark.integration
def test_board_readings_reach_window_summaries_in_the_outbox(tmp_path: Path) -> None:
    root = fake_tree(tmp_path / "board")
    sources = f"""
    [[sources]]
    name = "board"
    type = "sysfs"
    root = "{root}"
    interval = "200ms"
    """
    live: list[dict] = []

    def during(agent) -> None:
        time.sleep(2.5)  # the daemon writes its health every 2 s
        live.append(read_status(tmp_path / "data")["sources"]["board"])

    windows, status = run_agent(tmp_path, sources, during)
    assert set(windows) == set(EXPECTED)
    for sensor, (value, _) in EXPECTED.items():
        assert windows[sensor]["min"] == windows[sensor]["max"] == pytest.approx(value)
    board = status["sources"]["board"]
    assert board["accepted"] == sum(w["count"] for w in windows.values())
    assert board["errors"]["crc"] >= 1 and live[0]["connected"] is True

"""Readings from the board itself, through sysfs: 1-Wire temperature sensors, hwmon chips,
thermal zones and IIO devices. No dependency: the kernel's drivers do the work.

Sensors are found by glob at every poll, so one that appears is read from its next poll and one
that disappears is simply no longer read (counted as ``gone`` when it vanished mid-poll). Reads
go through a thread: a 1-Wire read makes the sensor convert, which takes up to 750 ms.

Sensor ids: ``w1/<device id>`` (``w1/28-0000075a1b2c``), ``hwmon/<chip name>/<input>``
(``hwmon/cpu_thermal/temp1``), ``thermal/<zone type>`` (``thermal/cpu-thermal``),
``iio/<device name>/<channel>`` (``iio/bme280/humidityrelative``). Two chips or zones with the
same name are told apart by their sysfs directory (``hwmon/nvme@hwmon2/temp1``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from pathlib import Path
from typing import Literal, NamedTuple

from agent.api import Source, SourceConfig, SourceContext
from agent.units import PositiveDuration

Kind = Literal["w1", "hwmon", "thermal", "iio"]
CRC = "crc"
GONE = "gone"
UNREADABLE = "unreadable"
BAD_VALUE = "bad_value"

# hwmon inputs: the file prefix, the factor from the kernel's unit, the unit.
_HWMON = {
    "temp": (0.001, "C"), "in": (0.001, "V"), "curr": (0.001, "A"), "power": (1e-6, "W"),
    "energy": (1e-6, "J"), "humidity": (0.001, "%"), "fan": (1.0, "rpm"), "pressure": (1.0, "Pa"),
}
_HWMON_INPUT = re.compile(r"^([a-z]+)(\d+)_input$")
# IIO channel types whose scaled value is in a milli unit (the ABI), and their unit.
_IIO_UNITS = {
    "temp": (0.001, "C"), "voltage": (0.001, "V"), "current": (0.001, "A"),
    "humidityrelative": (0.001, "%"), "pressure": (1000.0, "Pa"), "illuminance": (1.0, "lx"),
    "accel": (1.0, "m/s^2"), "anglvel": (1.0, "rad/s"), "magn": (1.0, "G"),
}
_IIO_RAW = re.compile(r"^in_(.+)_raw$")


class Found(NamedTuple):
    sensor: str
    value: float
    unit: str


class Fault(NamedTuple):
    reason: str
    detail: str


class SysfsConfig(SourceConfig):
    """Board sensors read through sysfs."""

    root: Path = Path("/")
    """Where ``sys/`` is looked for; tests point it at a fake tree."""
    interval: PositiveDuration = 10.0
    kinds: tuple[Kind, ...] = ("w1", "hwmon", "thermal", "iio")
    """Which families to read."""
    include: tuple[str, ...] = ("*",)
    """Sensor id patterns (``*`` and ``?``) to read: ``["w1/*", "thermal/*"]``."""
    exclude: tuple[str, ...] = ()
    """Sensor id patterns to leave out, after ``include``."""
    topic_prefix: str = "sensors/"


class SysfsSource(Source[SysfsConfig]):
    """Polls the board's sensors every ``interval``."""

    Config = SysfsConfig
    description = "1-Wire, hwmon, thermal zone and IIO sensors of the board, read through sysfs."

    def __init__(self, config: SysfsConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        self._wanted: dict[str, bool] = {}

    async def run(self) -> None:
        context = self.context
        async for now in context.ticks(self.config.interval):
            found, faults = await asyncio.to_thread(read_all, self.config.root, self.config.kinds)
            for fault in faults:
                context.fault(fault.reason, fault.detail)
            records = []
            for sensor, value, unit in found:
                if self._want(sensor):
                    record = context.reading(sensor, value, ts=now, unit=unit)
                    if record is not None:
                        records.append(record)
            if found:
                context.report_ok()
            else:
                context.report_error(f"no sensors under {self.config.root / 'sys'}")
            await context.publish(records)

    def _want(self, sensor: str) -> bool:
        wanted = self._wanted.get(sensor)
        if wanted is None:
            config = self.config
            wanted = any(fnmatch.fnmatchcase(sensor, p) for p in config.include) and not any(
                fnmatch.fnmatchcase(sensor, p) for p in config.exclude
            )
            self._wanted[sensor] = wanted
        return wanted


def read_all(root: Path, kinds: tuple[Kind, ...]) -> tuple[list[Found], list[Fault]]:
    """Every sensor of ``kinds`` under ``root``, and what went wrong reading them (blocking)."""
    found: list[Found] = []
    faults: list[Fault] = []
    readers = {"w1": _w1, "hwmon": _hwmon, "thermal": _thermal, "iio": _iio}
    for kind in kinds:
        readers[kind](root / "sys", found, faults)
    return found, faults


def _read(path: Path, faults: list[Fault]) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        faults.append(Fault(GONE, f"{path} disappeared"))
    except OSError as exc:  # ENODEV, EIO: a device that stopped answering
        faults.append(Fault(UNREADABLE, f"{path}: {exc.strerror or exc}"))
    return None


def _number(text: str | None, path: Path, faults: list[Fault]) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        faults.append(Fault(BAD_VALUE, f"{path}: {text.strip()[:40]!r}"))
        return None


def _w1(sys: Path, found: list[Found], faults: list[Fault]) -> None:
    for device in sorted((sys / "bus/w1/devices").glob("[0-9a-f][0-9a-f]-*")):
        newer = device / "temperature"  # kernels since 5.x: millidegrees, CRC already checked
        if newer.exists():
            value = _number(_read(newer, faults), newer, faults)
            if value is not None:
                found.append(Found(f"w1/{device.name}", value / 1000, "C"))
            continue
        slave = device / "w1_slave"
        if not slave.exists():
            continue  # not a temperature sensor
        text = _read(slave, faults)
        if text is None:
            continue
        lines = text.splitlines()
        if len(lines) < 2 or not lines[0].rstrip().endswith("YES"):
            faults.append(Fault(CRC, f"{slave}: CRC check failed: {lines[0].strip() if lines else 'empty'}"))
            continue
        _, sep, milli = lines[1].rpartition("t=")
        value = _number(milli if sep else "?", slave, faults)
        if value is not None:
            found.append(Found(f"w1/{device.name}", value / 1000, "C"))


def _named(dirs: list[Path], faults: list[Fault]) -> list[tuple[Path, str]]:
    """Each directory with its ``name`` (or ``type``) file's text, told apart when repeated."""
    named = []
    for directory in dirs:
        for file in ("name", "type"):
            if (directory / file).exists():
                text = _read(directory / file, faults)
                named.append((directory, (text or directory.name).strip() or directory.name))
                break
        else:
            named.append((directory, directory.name))
    counts: dict[str, int] = {}
    for _, name in named:
        counts[name] = counts.get(name, 0) + 1
    return [(d, name if counts[name] == 1 else f"{name}@{d.name}") for d, name in named]


def _hwmon(sys: Path, found: list[Found], faults: list[Fault]) -> None:
    chips = sorted((sys / "class/hwmon").glob("hwmon*"), key=lambda p: _index(p.name))
    for chip, name in _named(chips, faults):
        for path in sorted(chip.glob("*_input")):
            match = _HWMON_INPUT.match(path.name)
            if match is None or match[1] not in _HWMON:
                continue
            value = _number(_read(path, faults), path, faults)
            if value is not None:
                factor, unit = _HWMON[match[1]]
                found.append(Found(f"hwmon/{name}/{match[1]}{match[2]}", value * factor, unit))


def _thermal(sys: Path, found: list[Found], faults: list[Fault]) -> None:
    zones = sorted((sys / "class/thermal").glob("thermal_zone*"), key=lambda p: _index(p.name))
    for zone, name in _named(zones, faults):
        value = _number(_read(zone / "temp", faults), zone / "temp", faults)
        if value is not None:
            found.append(Found(f"thermal/{name}", value / 1000, "C"))


def _iio(sys: Path, found: list[Found], faults: list[Fault]) -> None:
    devices = sorted((sys / "bus/iio/devices").glob("iio:device*"), key=lambda p: _index(p.name))
    for device, name in _named(devices, faults):
        for raw_path in sorted(device.glob("in_*_raw")):
            match = _IIO_RAW.match(raw_path.name)
            if match is None:
                continue
            channel = match[1]
            kind = channel.split("_")[0].rstrip("0123456789")
            raw = _number(_read(raw_path, faults), raw_path, faults)
            if raw is None:
                continue
            scale = _channel_file(device, channel, kind, "scale", faults, 1.0)
            offset = _channel_file(device, channel, kind, "offset", faults, 0.0)
            if scale is None or offset is None:
                continue
            factor, unit = _IIO_UNITS.get(kind, (1.0, ""))
            found.append(Found(f"iio/{name}/{channel}", (raw + offset) * scale * factor, unit))


def _channel_file(
    device: Path, channel: str, kind: str, what: str, faults: list[Fault], default: float
) -> float | None:
    """A channel's own ``in_<channel>_<what>``, else its type's shared one, else ``default``."""
    for candidate in (device / f"in_{channel}_{what}", device / f"in_{kind}_{what}"):
        if candidate.exists():
            return _number(_read(candidate, faults), candidate, faults)
    return default


def _index(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0

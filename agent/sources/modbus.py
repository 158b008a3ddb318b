"""Readings from Modbus devices over TCP or RTU (a serial line), polled by register map.

One connection per source; several devices (unit ids) on it, each polled at its own interval;
values of one kind at contiguous addresses are read in one request. A request that fails is
counted by reason (``timeout``, ``crc``, ``exception_2``...) and the other devices and requests
carry on; when the connection itself is gone, the source raises and is reconnected with backoff.
Sensor ids are ``<device>/<register name>``. pymodbus is reached only through
``modbus_adapter`` (an optional extra, imported when the source starts).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, Field, model_validator

from agent.api import Record, Source, SourceConfig, SourceContext
from agent.extras import require
from agent.sources.modbus_map import Block, DeviceConfig, block_values, plan_blocks
from agent.sources.readings import NOT_FINITE
from agent.units import PositiveDuration

if TYPE_CHECKING:
    from agent.sources.modbus_adapter import Connection, Link

def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "modbus+tcp":
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host (modbus+tcp://192.0.2.20:502)")
        parts.port  # noqa: B018  # raises on a bad port
    elif parts.scheme == "modbus+rtu":
        if not parts.path or parts.netloc:
            raise ValueError(f"{url!r}: use modbus+rtu:///dev/ttyUSB0?baudrate=9600")
        _serial_options(parts.query)
    else:
        raise ValueError(f"{url!r}: use modbus+tcp://host:port or modbus+rtu:///dev/ttyX?baudrate=9600")
    return url


def _serial_options(query: str) -> dict[str, Any]:
    options: dict[str, Any] = {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}
    for key, values in parse_qs(query, strict_parsing=bool(query)).items():
        if key not in options:
            raise ValueError(f"unknown serial option {key!r} (baudrate, bytesize, parity, stopbits)")
        value = values[-1]
        if key == "parity":
            if value.upper() not in ("N", "E", "O"):
                raise ValueError(f"parity {value!r}: use N, E or O")
            options[key] = value.upper()
        elif not value.isdigit():
            raise ValueError(f"{key} {value!r} is not a number")
        else:
            options[key] = int(value)
    return options


class ModbusConfig(SourceConfig):
    """Modbus TCP or RTU devices, each with a register map."""

    url: Annotated[str, AfterValidator(_check_url)]
    """``modbus+tcp://192.0.2.20:502`` or ``modbus+rtu:///dev/ttyUSB0?baudrate=9600&parity=E``."""
    timeout: PositiveDuration = 1.0
    """How long a request waits for its reply before it counts as a ``timeout``."""
    max_gap: Annotated[int, Field(ge=0, le=100)] = 0
    """Registers this far apart are still read in one request (their gap is read and ignored)."""
    devices: Annotated[list[DeviceConfig], Field(min_length=1)]
    topic_prefix: str = "sensors/"

    @model_validator(mode="after")
    def _extra_installed(self) -> ModbusConfig:
        require("modbus", "type = 'modbus'")
        names = [device.name for device in self.devices]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"device names used twice: {', '.join(repeated)}")
        return self

    def link(self) -> Link:
        from agent.sources.modbus_adapter import Link

        parts = urlsplit(self.url)
        if parts.scheme == "modbus+tcp":
            return Link("tcp", host=parts.hostname or "", port=parts.port or 502)
        return Link("rtu", device=parts.path, **_serial_options(parts.query))


class ModbusSource(Source[ModbusConfig]):
    """Polls every device's register map over one connection."""

    Config = ModbusConfig
    description = "Modbus TCP and RTU devices, polled by register map (pymodbus: the `modbus` extra)."

    def __init__(self, config: ModbusConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        self._connection: Connection | None = None
        self._plans = {d.name: self._plan(d) for d in config.devices}
        self._failing: set[str] = set()
        self._lost = asyncio.Event()

    def _plan(self, device: DeviceConfig) -> list[tuple[Block, list[tuple[str, str, str | None]]]]:
        """The device's requests, each with the sensor id, topic and unit of its values."""
        prefix = self.config.topic_prefix
        plan = []
        for block in plan_blocks(device.registers, self.config.max_gap):
            sensors = [(f"{device.name}/{register.name}", f"{prefix}{device.name}/{register.name}",
                        register.unit) for _, register in block.values]
            plan.append((block, sensors))
        return plan

    async def run(self) -> None:
        from agent.sources.modbus_adapter import Connection

        self._connection = connection = Connection(self.config.link(), self.config.timeout)
        await connection.connect()
        self.context.report_ok()
        self.context.log.info("connected to %s", self.config.url)
        async with asyncio.TaskGroup() as group:
            for device in self.config.devices:
                group.create_task(self._poll(device), name=f"modbus:{self.config.name}:{device.name}")
            await self._lost.wait()
            raise ConnectionError(f"{self.config.url}: no device answers")

    async def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()

    async def _poll(self, device: DeviceConfig) -> None:
        context = self.context
        async for now in context.ticks(device.interval):
            records, faults = await self._read_device(device, now)
            if records:
                await context.publish(records)
            self._note(device.name, ok=bool(records) or not faults)

    async def _read_device(self, device: DeviceConfig, now: float) -> tuple[list[Record], int]:
        from agent.sources.modbus_adapter import ModbusFault

        assert self._connection is not None
        records: list[Record] = []
        faults = 0
        for block, sensors in self._plans[device.name]:
            try:
                words = await self._connection.read(block.kind, block.address, block.count, device.unit)
            except ModbusFault as fault:
                faults += 1
                self.context.fault(fault.reason, f"{device.name}: {fault}")
                continue
            self._readings(block, sensors, words, now, records)
        return records, faults

    def _readings(
        self, block: Block, sensors: list[tuple[str, str, str | None]], words: list[int], now: float,
        out: list[Record],
    ) -> None:
        """What ``context.reading`` would make of each value, made here in one pass: the
        topics are known in advance and ``now`` is a good reading time."""
        context = self.context
        append = out.append
        taken = 0
        for (sensor, topic, unit), value in zip(sensors, block_values(block, words), strict=True):
            if value - value != 0.0:  # NaN or an infinity: a float register may hold either
                context.reject(NOT_FINITE, f"{sensor}: {value!r}")
                continue
            data: dict[str, Any] = {"sensor": sensor, "value": value}
            if unit is not None:
                data["unit"] = unit
            append(Record(topic, now, data))
            taken += 1
        context.counters.incr("received", taken)

    def _note(self, device: str, ok: bool) -> None:
        """Health from the devices' last polls; every device failing means the link is gone."""
        if ok:
            self._failing.discard(device)
            self.context.report_ok()
            return
        self._failing.add(device)
        if len(self._failing) == len(self.config.devices):
            self.context.report_error(f"{self.config.url}: no device answers")
            connection = self._connection
            if connection is not None and not connection.connected:
                self._lost.set()

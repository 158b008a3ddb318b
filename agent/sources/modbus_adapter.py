"""The only file that imports pymodbus: a connection and four reads, in the agent's terms.

pymodbus changes its API between minor releases (the unit keyword went ``unit=`` → ``slave=``
→ ``device_id=``, byte-order helpers moved, releases were yanked), so the extra pins a minor
range and everything version-specific stays here. A read returns the words or bits, or raises
``ModbusFault`` with the reason it is counted under: ``timeout``, ``crc`` (a reply arrived with
a bad checksum, so none was taken), ``exception_<code>`` (the device refused: 2 is an illegal
address), ``disconnected``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

Kind = Literal["holding", "input", "coil", "discrete"]


class ModbusFault(Exception):
    """A read that gave no values; ``reason`` names why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True)
class Link:
    """Where the devices are: TCP host and port, or a serial port with its framing."""

    transport: Literal["tcp", "rtu"]
    host: str = ""
    port: int = 502
    device: str = ""
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1


class Connection:
    """One client: several devices (unit ids) are read over it, one request at a time."""

    def __init__(self, link: Link, timeout: float) -> None:
        self.link = link
        self._last_rx = b""
        client: Any
        if link.transport == "tcp":
            client = AsyncModbusTcpClient(
                link.host, port=link.port, timeout=timeout, retries=0, reconnect_delay=0,
                trace_packet=self._trace,
            )
        else:
            client = AsyncModbusSerialClient(
                link.device, framer=FramerType.RTU, baudrate=link.baudrate, bytesize=link.bytesize,
                parity=link.parity, stopbits=link.stopbits, timeout=timeout, retries=0,
                reconnect_delay=0, trace_packet=self._trace,
            )
        self._client = client
        self._lock = asyncio.Lock()  # a serial line carries one request at a time
        self._stale = False

    async def connect(self) -> None:
        """Open the connection; ``OSError`` if it cannot be."""
        if not await self._client.connect():
            raise ConnectionError(f"cannot connect to {self._where()}")

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    def close(self) -> None:
        self._client.close()

    async def read(self, kind: Kind, address: int, count: int, unit: int) -> list[int]:
        """``count`` registers (or bits, as 0/1) from ``address`` of device ``unit``."""
        async with self._lock:
            if self._stale:
                await self._reopen()
            self._last_rx = b""
            try:
                response = await self._request(kind, address, count, unit)
            except ConnectionException as exc:
                raise ModbusFault("disconnected", str(exc)) from None
            except ModbusException as exc:  # no (valid) reply within the timeout
                # A reply that comes later must not be taken for the next request's: start afresh.
                self._stale = True
                if self.link.transport == "rtu" and _bad_crc(self._last_rx):
                    raise ModbusFault("crc", f"a reply from unit {unit} failed its CRC") from None
                raise ModbusFault("timeout", f"unit {unit}: {exc}") from None
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise ModbusFault(f"exception_{code}", f"unit {unit} refused {kind} {address}+{count}")
        values = response.bits[:count] if kind in ("coil", "discrete") else response.registers
        if len(values) < count:
            raise ModbusFault("short_reply", f"unit {unit} sent {len(values)} of {count} values")
        return [int(value) for value in values]

    async def _reopen(self) -> None:
        self._client.close()
        try:
            await self.connect()
        except OSError as exc:
            raise ModbusFault("disconnected", str(exc)) from None
        self._stale = False

    async def _request(self, kind: Kind, address: int, count: int, unit: int) -> Any:
        client = self._client
        if kind == "holding":
            return await client.read_holding_registers(address, count=count, device_id=unit)
        if kind == "input":
            return await client.read_input_registers(address, count=count, device_id=unit)
        if kind == "coil":
            return await client.read_coils(address, count=count, device_id=unit)
        return await client.read_discrete_inputs(address, count=count, device_id=unit)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._last_rx = bytes(data)
        return data

    def _where(self) -> str:
        link = self.link
        return f"{link.host}:{link.port}" if link.transport == "tcp" else link.device


def _bad_crc(frame: bytes) -> bool:
    """Whether ``frame`` looks like an RTU reply whose CRC does not match."""
    if len(frame) < 5:
        return False
    crc = 0xFFFF
    for byte in frame[:-2]:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little") != frame[-2:]

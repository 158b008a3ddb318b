"""pymodbus's own server, on a loopback port or a pseudo-terminal, in a thread of its own so that
an agent process (or the source harness's loop) can poll it; and socat pty pairs."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.conftest import free_port, wait_for_port

logging.getLogger("pymodbus").setLevel(logging.ERROR)


class ModbusTestServer:
    """Devices by unit id, each with holding and input registers from address 0 (``set`` changes
    them while the server runs), coils from 0, and an optional delay per unit (a slow device)."""

    def __init__(self, devices: dict[int, dict[str, list[Any]]]) -> None:
        self.state = {unit: {"h": list(d.get("hr", [])), "i": list(d.get("ir", []))}
                      for unit, d in devices.items()}
        self.delay: dict[int, float] = {}
        self.requests = 0
        self._devices = [self._device(unit, d) for unit, d in devices.items()]
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def set(self, unit: int, kind: str, address: int, words: list[int]) -> None:
        self.state[unit][kind][address : address + len(words)] = words

    def start_tcp(self) -> int:
        port = free_port()
        self._start(lambda: ModbusTcpServer(self._devices, address=("127.0.0.1", port)))
        wait_for_port(port)
        return port

    def start_rtu(self, device: str, baudrate: int = 19200) -> None:
        self._start(lambda: ModbusSerialServer(self._devices, framer=FramerType.RTU, port=device,
                                               baudrate=baudrate))
        time.sleep(0.3)

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _start(self, make: Any) -> None:
        self._thread.start()

        async def serve() -> None:
            self._server = make()
            asyncio.get_running_loop().create_task(self._server.serve_forever())

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)

    def _device(self, unit: int, spec: dict[str, list[Any]]) -> SimDevice:
        def block(values: list[Any], datatype: DataType) -> list[SimData]:
            return [SimData(0, values=values, datatype=datatype)]  # pymodbus wants every block

        return SimDevice(
            unit,
            simdata=(
                block([bool(v) for v in spec.get("co", [0])], DataType.BITS),
                block([bool(v) for v in spec.get("di", [0])], DataType.BITS),
                block(list(spec.get("hr", [0])), DataType.REGISTERS),
                block(list(spec.get("ir", [0])), DataType.REGISTERS),
            ),
            action=partial(self._action, unit),
        )

    async def _action(
        self, unit: int, func_code: int, start: int, address: int, count: int,
        registers: list[int], values: Any,
    ) -> None:
        """Serve the current values (and be slow when told to)."""
        self.requests += 1
        if self.delay.get(unit):
            await asyncio.sleep(self.delay[unit])
        kind = {3: "h", 4: "i"}.get(func_code)
        if kind is not None:
            current = self.state[unit][kind]
            registers[: len(current)] = current
        return None


class PtyPair:
    """Two connected pseudo-terminals made by socat: what is written to one is read from the other."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("socat") is None:
            pytest.skip("socat is not installed (scripts/ensure-deps.sh installs it)")
        folder.mkdir(parents=True, exist_ok=True)
        self.a, self.b = str(folder / "pty-a"), str(folder / "pty-b")
        self._process = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not (Path(self.a).exists() and Path(self.b).exists()):
            if time.monotonic() > deadline:
                raise TimeoutError("socat made no pty pair")
            time.sleep(0.02)

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(5)


def words_of_float32(value: float) -> list[int]:
    import struct

    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]

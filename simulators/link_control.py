"""The link proxy's control port: one command a line, one answer a line, loopback only.

    $ edge-sim linkctl 127.0.0.1:7001 halfopen
    ok {"mode": "halfopen", ...}

Commands: ``pass``, ``delay MS``, ``throttle BYTES_PER_S``, ``drop``, ``halfopen``, ``status``.
Answers: ``ok <status as JSON>`` or ``error <reason>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

from simulators.addresses import require_loopback
from simulators.link import LinkProxy

log = logging.getLogger(__name__)

MAX_LINE = 1024


class ControlServer:
    """Serves commands for one proxy."""

    def __init__(self, proxy: LinkProxy, listen: tuple[str, int]) -> None:
        require_loopback(listen[0], "control address")
        self._proxy = proxy
        self._listen = listen
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the control server is not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, *self._listen, limit=MAX_LINE)
        log.info("link control on %s:%d", self._listen[0], self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def answer(self, line: str) -> str:
        """The answer to one command line."""
        command = line.strip()
        if command.lower() != "status":
            try:
                self._proxy.set_mode(command)
            except ValueError as error:
                return f"error {error}"
        return "ok " + json.dumps(self._proxy.status())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((self.answer(line.decode(errors="replace")) + "\n").encode())
                await writer.drain()
        except (ConnectionError, ValueError):  # ValueError: a line over MAX_LINE
            pass
        finally:
            writer.close()


def send_command(address: tuple[str, int], command: str, timeout: float = 5.0) -> str:
    """Send one command to a control port; its answer line."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(command.strip().encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode().strip()

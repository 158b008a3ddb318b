"""A TCP proxy between a client and a broker whose link can be slowed, cut or silenced.

    proxy = LinkProxy(("127.0.0.1", 0), ("127.0.0.1", broker_port))
    await proxy.start()                  # clients connect to proxy.port
    proxy.set_mode("halfopen")           # or "delay 200", "throttle 5000", "drop", "pass"
    await proxy.stop()

Everything runs on one event loop; ``set_mode`` must be called from it (``ThreadedLink`` wraps
a proxy for synchronous code).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

from simulators.addresses import require_loopback
from simulators.link_pipe import Controls, Pipe
from simulators.link_state import LinkMode, LinkState, parse_state

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0


class LinkProxy:
    """Accepts on a loopback address and forwards each connection to ``target``."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        require_loopback(listen[0], "listen address")
        self.listen = listen
        self.target = target
        self.state = LinkState()
        self.accepted = 0
        self.refused = 0
        self._bytes = [0, 0]  # up, down, of connections already closed
        self._controls: Controls | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        """The port clients connect to (the one picked when listening on port 0)."""
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._controls = Controls()
        self._controls.flowing.set()
        self._server = await asyncio.start_server(self._accept, *self.listen)
        log.info("link %s:%d -> %s:%d, %s", self.listen[0], self.port, *self.target, self.state)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
        self._server = None

    def set_mode(self, mode: LinkMode | LinkState | str, value: float | None = None) -> LinkState:
        """Switch to ``mode``: a ``LinkState``; a mode and its value (ms for delay, bytes/s for
        throttle); or a command as the control port takes it (``"delay 200"``)."""
        if isinstance(mode, LinkState):
            state = mode
        else:
            state = parse_state(str(mode) if value is None else f"{mode} {value}")
        self._apply(state)
        return state

    def status(self) -> dict[str, Any]:
        """The mode and traffic counts, as the control port's ``status`` shows them."""
        return {
            "mode": self.state.mode.value,
            "delay_ms": self.state.delay_ms,
            "rate": self.state.rate,
            "open": len(self._connections),
            "accepted": self.accepted,
            "refused": self.refused,
            "bytes_up": self._bytes[0] + sum(c.up.bytes for c in self._connections),
            "bytes_down": self._bytes[1] + sum(c.down.bytes for c in self._connections),
        }

    def _apply(self, state: LinkState) -> None:
        controls = self._controls
        if controls is None:
            raise RuntimeError("start the proxy before changing its mode")
        self.state = state
        controls.delay = state.delay_ms / 1000 if state.mode is LinkMode.DELAY else 0.0
        rate = state.rate if state.mode is LinkMode.THROTTLE else 0.0
        controls.upstream.set_rate(rate)
        controls.downstream.set_rate(rate)
        if state.mode is LinkMode.HALFOPEN:
            controls.flowing.clear()
        else:
            controls.flowing.set()
        if state.mode is LinkMode.DROP:
            for connection in list(self._connections):
                connection.abort()
        log.info("link mode: %s (%d open connections)", state, len(self._connections))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._controls is not None
        if self.state.mode is LinkMode.DROP:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as error:
            log.warning("cannot reach %s:%d: %s", *self.target, error)
            self.refused += 1
            _reset(writer)
            return
        self.accepted += 1
        connection = _Connection(reader, writer, up_reader, up_writer, self._controls)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self._bytes[0] += connection.up.bytes
            self._bytes[1] += connection.down.bytes


class _Connection:
    """A client's connection and its own connection to the target, with a pipe each way."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                 controls: Controls) -> None:
        self._writers = (writer, up_writer)
        self.up = Pipe(reader, up_writer, controls, controls.upstream)
        self.down = Pipe(up_reader, writer, controls, controls.downstream)
        self._task: asyncio.Task[Any] | None = None

    async def run(self) -> None:
        """Until either side closes: then the other is closed too, as a proxy in the path
        of a real connection would see it."""
        up = asyncio.create_task(self.up.run())
        down = asyncio.create_task(self.down.run())
        self._task = asyncio.current_task()
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for task in (up, down):
                task.cancel()
            for task in (up, down):
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
            for writer in self._writers:
                writer.close()

    def abort(self) -> None:
        """Cut both sides at once with a reset, as when the link or the peer went away."""
        for writer in self._writers:
            _reset(writer)
        if self._task is not None:
            self._task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger 0: close sends RST, so the peer learns at once rather than on its next write.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

"""Knowing that the listener on a port is a given child process's, not someone else's.

A free port is found by binding port 0 and letting it go, so until the child binds it, any other
program may take it (another demo's broker, another test's console). "Something answers on the
port" then proves nothing. A child counts as listening once a listening socket on the port is
among its own open files (Linux's ``/proc``); if it exits first, its log says why, and a port
held by someone else is reported as ``PortInUse``, naming the port.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

_PROC_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


class PortInUse(RuntimeError):
    """A child could not listen on its port: another program holds the address."""

    def __init__(self, name: str, port: int) -> None:
        super().__init__(f"{name} cannot listen on 127.0.0.1:{port}: another program holds the address")


def free_port() -> int:
    """A port nobody listens on now (anyone may take it before the caller binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in _PROC_TCP:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def owns_listener(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a socket listening on ``port`` among its open files."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    fds = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(fds / name) in wanted:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


async def _answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def wait_until_listening(
    name: str, process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 15.0,
    log_from: int = 0, ready: Callable[[int], Awaitable[bool]] | None = None,
) -> None:
    """Return once ``process`` listens on ``port``. Raise ``PortInUse`` if it exited saying the
    address is in use (in ``log`` past byte ``log_from``), ``RuntimeError`` if it exited otherwise,
    ``TimeoutError`` after ``timeout``. With ``ready``, its listener must also pass that check
    (say, answer an identifying request).

    Without ``/proc`` (not Linux), a listener on the port while the process lives is taken as its.
    """
    have_proc = _PROC_TCP[0].exists()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _exit_error(name, process, port, log, log_from)
        listening = owns_listener(process.pid, port) if have_proc else await _answers(port)
        if listening and (ready is None or await ready(port)) and process.poll() is None:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{name} is not listening on 127.0.0.1:{port} after {timeout:.0f} s: see {log}")


def _exit_error(
    name: str, process: subprocess.Popen[bytes], port: int, log: Path, log_from: int
) -> RuntimeError:
    try:
        with log.open("rb") as file:
            file.seek(log_from)
            text = file.read().decode(errors="replace")
    except OSError:
        text = ""
    if "address already in use" in text.lower():
        return PortInUse(name, port)
    return RuntimeError(
        f"{name} exited with {process.returncode} before listening on 127.0.0.1:{port}: see {log}"
    )

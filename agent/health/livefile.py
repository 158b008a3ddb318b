"""The daemon's health in a small file beside the outbox, written in place.

Health normally rides in the outbox's commits. When those fail (a full disk) the health that says
so cannot ride in them, so it is also written here: a file of fixed size, allocated at start while
there is room, overwritten in place every few seconds. Writing into blocks a file already owns
needs no free space, so this keeps working on a full disk. ``edge-agent status`` prefers it when
it is fresher than the health in the outbox.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from agent import codec

log = logging.getLogger(__name__)

NAME = "health.live"
SIZE = 65536


class LiveHealth:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / NAME
        self._fd: int | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(fd).st_size < SIZE:
                os.posix_fallocate(fd, 0, SIZE)
            self._fd = fd
        except OSError as exc:  # no room even now: status falls back to the outbox's health
            log.warning("cannot prepare %s: %s", self.path, exc)

    def write(self, health: dict[str, Any]) -> None:
        if self._fd is None:
            return
        data = codec.dumps(health).encode()
        if len(data) >= SIZE:
            data = codec.dumps({k: v for k, v in health.items() if k != "sources"}).encode()[: SIZE - 1]
        try:
            os.pwrite(self._fd, data + b"\0", 0)
        except OSError as exc:
            log.debug("cannot write %s: %s", self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def read_live(data_dir: Path) -> dict[str, Any] | None:
    """The last health written in place, or None (no file, or caught mid-write)."""
    try:
        raw = (Path(data_dir) / NAME).read_bytes().split(b"\0", 1)[0]
        value = codec.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

"""Readings from a file that another program appends to: each new line is a reading.

The file is followed by its name, as ``tail -F`` does. Rotation (the name now points at another
file: ``logrotate``'s rename-and-create) is seen by comparing the name's inode with the open
file's: what the old file still held is read to its end first, then the new file from its
start. Truncation in place (``copytruncate``, ``> file``) is seen as a file shorter than the
position read so far: reading starts again from the top. A file that does not exist yet is
waited for. Regular files are read in bounded chunks on the event loop: a read of a page-cached
file of at most ``CHUNK`` bytes takes well under a millisecond.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Literal

from agent.api import Source, SourceContext
from agent.sources.lines import LineDecoder, LineSourceConfig, split_lines
from agent.units import PositiveDuration

CHUNK = 1024 * 1024


class TailConfig(LineSourceConfig):
    """A file followed by name, each appended line a reading."""

    path: Path
    start: Literal["end", "beginning"] = "end"
    """Where reading starts when the agent starts: only new lines (``end``) or the whole file.
    After a rotation or truncation the new file is always read from its beginning."""
    poll: PositiveDuration = 0.25
    """How often the file is checked for new lines, rotation and truncation."""


class TailSource(Source[TailConfig]):
    """Follows ``path`` across rotation and truncation."""

    Config = TailConfig
    description = "Follows a file across rotation and truncation; each new line is a reading."

    def __init__(self, config: TailConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        self._decoder = LineDecoder(config, context)
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._position = 0
        self._buffer = bytearray()

    async def run(self) -> None:
        first = True
        while True:
            if self._fd is None and self._open(from_end=first and self.config.start == "end"):
                first = False
            elif self._fd is None:
                first = False  # a file made later is read from its beginning
            if self._fd is not None:
                await self._read_to_end()
                await self._check_rotation()
            await asyncio.sleep(self.config.poll)

    async def stop(self) -> None:
        self._close()

    def _open(self, from_end: bool) -> bool:
        path = self.config.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            self.context.report_error(f"{path}: no such file (waiting for it)")
            return False
        except OSError as exc:
            self.context.report_error(f"{path}: {exc.strerror}")
            self.context.fault("open_error", f"{path}: {exc}")
            return False
        stat = os.fstat(fd)
        self._fd, self._inode = fd, (stat.st_dev, stat.st_ino)
        self._position = os.lseek(fd, 0, os.SEEK_END) if from_end else 0
        self._buffer.clear()
        self.context.report_ok()
        self.context.log.info("following %s from byte %d", path, self._position)
        return True

    async def _read_to_end(self) -> None:
        assert self._fd is not None
        fd = self._fd
        if os.fstat(fd).st_size < self._position:  # truncated in place
            self.context.counters.incr("truncations")
            self.context.log.info("%s was truncated; reading it from the top", self.config.path)
            self._position = 0
            self._buffer.clear()
        while chunk := os.pread(fd, CHUNK, self._position):
            self._position += len(chunk)
            lines = split_lines(self._buffer, chunk)
            if lines:
                await self.context.publish(self._decoder.decode(lines, time.time()))

    async def _check_rotation(self) -> None:
        try:
            stat = os.stat(self.config.path)
        except FileNotFoundError:
            return  # renamed away and not yet recreated: keep the old file until it is
        if (stat.st_dev, stat.st_ino) == self._inode:
            return
        self.context.counters.incr("rotations")
        self.context.log.info("%s was rotated; following the new file", self.config.path)
        await self._read_to_end()  # what was written to the old file since the last look
        if self._buffer:  # the old file's last line, never terminated
            self.context.publish_nowait(self._decoder.decode([bytes(self._buffer)], time.time()))
        self._close()
        self._open(from_end=False)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None

"""Readings from a file that another program appends to: each new line is a reading.

The file is followed by its name, as ``tail -F`` does. Rotation (the name now points at another
file: ``logrotate``'s rename-and-create) is seen by comparing the name's inode with the open
file's: what the old file still held is read to its end first, then the new file from its
start. Truncation in place (``copytruncate``, ``> file``) is seen as a file shorter than the
position read so far: reading starts again from the top. A file that does not exist yet is
waited for. Regular files are read in bounded chunks on the event loop: a read of a page-cached
file of at most ``CHUNK`` bytes takes well under a millisecond.

Across restarts of the agent, the place read to (the file's device and inode, the offset after
the last whole line, and the bytes just before it) is saved with each checkpoint, so a restart,
even after a crash, goes on from the first line not yet taken. What happened meanwhile is
handled as it is while running: a file rotated away is found again by its inode in the same
folder and read to its end before the new one; a file truncated (shorter than the offset, or
no longer holding the same bytes before it) is read from the top.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Literal

from agent.api import Source, SourceContext
from agent.sources.lines import LineDecoder, LineSourceConfig, split_lines
from agent.units import PositiveDuration

CHUNK = 1024 * 1024
MARK = 32
"""Bytes before the saved offset kept with it, to tell the same file from one truncated and
written again past the offset while the agent was stopped."""


class TailConfig(LineSourceConfig):
    """A file followed by name, each appended line a reading."""

    path: Path
    start: Literal["end", "beginning"] = "end"
    """Where reading starts the first time: only new lines (``end``) or the whole file. Later
    starts go on from where the last one stopped. After a rotation or truncation the new file
    is always read from its beginning."""
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
        self._line_start = 0  # where the line being read starts: where a restart goes on from
        self._buffer = bytearray()
        self._saved: dict[str, Any] | None = None
        self._paused = False

    def restore(self, saved: Any) -> None:
        if isinstance(saved, dict) and saved.get("path") == str(self.config.path):
            self._saved = saved  # another path: a config that changed, nothing to go on from

    def checkpoint(self) -> Any:
        """The offset after the last line published (and the bytes before it)."""
        if self._fd is None or self._inode is None:
            return None
        offset = self._line_start
        mark = os.pread(self._fd, min(MARK, offset), offset - min(MARK, offset))
        return {"path": str(self.config.path), "dev": self._inode[0], "ino": self._inode[1],
                "offset": offset, "mark": mark.hex()}

    def pause(self) -> None:
        self._paused = True

    async def run(self) -> None:
        first = self._saved is None  # after a run that read the file, no line is skipped
        if self._saved is not None:
            self._resume(self._saved)
        while True:
            if self._paused:
                await asyncio.sleep(self.config.poll)
                continue
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

    def _resume(self, saved: dict[str, Any]) -> None:
        """Open the file read before at its saved place, wherever it is now. When it is gone,
        what it held past the place was not read: counted and said in the log."""
        path = self.config.path
        try:
            inode, offset, mark = (int(saved["dev"]), int(saved["ino"])), int(saved["offset"]), \
                bytes.fromhex(saved["mark"])
        except (KeyError, TypeError, ValueError):
            self.context.log.warning("%s: the saved place %r is not one; not resumed", path, saved)
            return
        found = path if _inode_of(path) == inode else _find(path.parent, inode)
        if found is None:
            self.context.counters.incr("lost_files")
            self.context.log.warning("%s: the file read before (inode %d) is gone; lines written "
                                     "to it after byte %d were not read", path, inode[1], offset)
            return
        try:
            fd = os.open(found, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.context.log.warning("%s: %s; not resumed", found, exc.strerror)
            return
        stat = os.fstat(fd)
        self._fd, self._inode, self._buffer = fd, (stat.st_dev, stat.st_ino), bytearray()
        if (stat.st_dev, stat.st_ino) != inode or stat.st_size < offset or \
                os.pread(fd, len(mark), offset - len(mark)) != mark:
            self.context.counters.incr("truncations")
            self.context.log.info("%s was truncated while the agent was stopped; reading it from "
                                  "the top", found)
            offset = 0
        self._position = self._line_start = offset
        self.context.report_ok()
        self.context.log.info("following %s from byte %d, where the last run stopped", found, offset)

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
        self._position = self._line_start = os.lseek(fd, 0, os.SEEK_END) if from_end else 0
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
            self._position = self._line_start = 0
            self._buffer.clear()
        while not self._paused and (chunk := os.pread(fd, CHUNK, self._position)):
            start, self._position = self._position, self._position + len(chunk)
            lines = split_lines(self._buffer, chunk, self.config.max_line)
            if (newline := chunk.rfind(b"\n")) >= 0:
                self._line_start = start + newline + 1
            if lines:
                await self.context.publish(self._decoder.decode(lines, time.time()))

    async def _check_rotation(self) -> None:
        if self._paused:
            return
        try:
            stat = os.stat(self.config.path)
        except FileNotFoundError:
            return  # renamed away and not yet recreated: keep the old file until it is
        if (stat.st_dev, stat.st_ino) == self._inode:
            return
        self.context.counters.incr("rotations")
        self.context.log.info("%s was rotated; following the new file", self.config.path)
        await self._read_to_end()  # what was written to the old file since the last look
        if self._paused:
            return  # the saved place is in the old file: the next start finds it by its inode
        if self._buffer:  # the old file's last line, never terminated
            self.context.publish_nowait(self._decoder.decode([bytes(self._buffer)], time.time()))
        self._close()
        self._open(from_end=False)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None


def _inode_of(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _find(folder: Path, inode: tuple[int, int]) -> Path | None:
    """The name ``inode`` has now in ``folder`` (a rotated file keeps its inode), if any."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.inode() == inode[1] and entry.is_file(follow_symlinks=False) \
                        and entry.stat(follow_symlinks=False).st_dev == inode[0]:
                    return Path(entry.path)
    except OSError:
        return None
    return None

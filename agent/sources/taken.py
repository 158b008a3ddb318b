"""How many readings a source took that its broker will not deliver again (QoS 0, or QoS 1
acknowledged on receipt), counted in a small file mapped into memory.

A crash loses those taken since the last checkpoint: nothing brings them back, so they are
counted as ``lost_at_crash:qos0_since_checkpoint``. Each checkpoint saves the count as of its
cut; the mapped file has the count up to the last reading, and a process killed outright leaves
it behind (the page belongs to the kernel's cache, not to the process). At the next start, the
file's count less the checkpoint's is what the crash lost, exactly. A power cut can lose the
page as well: then the file may lag the checkpoint, and nothing is counted for it.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

_COUNT = struct.Struct("<Q")


class TakenCount:
    """The count, and the file it is mapped from (None: memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.value = 0
        self._saved: int | None = None
        """The value the last cut handed to a checkpoint."""
        self._map: mmap.mmap | None = None
        self._path = path
        if path is not None and path.exists():
            self._open(path)

    def add(self, count: int) -> None:
        self.value += count
        if self._map is None and self._path is not None:
            self._open(self._path)  # made on the first reading: sources that never count have none
            self._path = None
        if self._map is not None:
            _COUNT.pack_into(self._map, 0, self.value)

    def cut(self) -> int | None:
        """The count, for the checkpoint being taken now, if it changed since the last one."""
        if self.value == self._saved:
            return None
        self._saved = self.value
        return self.value

    def lost_since(self, checkpointed: int) -> int:
        """Readings taken after the checkpoint that saved ``checkpointed``, before a crash: 0 if
        the run stopped cleanly (its last checkpoint saved the count) or the file lags it."""
        return max(0, self.value - checkpointed)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < _COUNT.size:
                    os.ftruncate(fd, _COUNT.size)
                self._map = mmap.mmap(fd, _COUNT.size)
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:  # no count: a crash's loss is then not counted
            log.warning("cannot keep the count of readings taken in %s: %s", path, exc)
            return
        with contextlib.suppress(struct.error):
            self.value = max(self.value, _COUNT.unpack_from(self._map, 0)[0])

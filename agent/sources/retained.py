"""What each topic last gave, so that a retained message the broker delivers again (on every
subscribe: each reconnect, each restart) is taken once.

A broker marks a message retained only when it sends it because of a new subscription; the
same message reached us unmarked when it was published. So the memory holds the last payload
taken on every topic, marked or not, and a retained delivery equal to it is a repeat. It is
saved in the data directory (topic to CRC-32 of the payload), so a restart remembers too.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

from agent import codec

log = logging.getLogger(__name__)

MAX_TOPICS = 200_000
"""Topics remembered at most; messages on further topics are taken every time."""
_KEEP_BYTES = 256  # payloads up to this are kept as they are; longer ones as their CRC-32


class RetainedMemory:
    """The last payload taken per topic, and the file it is saved in (None: memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._last: dict[str, bytes | int] = {}
        self.dirty = False
        if path is not None:
            self._load(path)

    def note(self, topic: str, payload: bytes) -> None:
        """``payload`` was taken on ``topic``."""
        last = self._last
        if len(last) >= MAX_TOPICS and topic not in last:
            return
        last[topic] = payload if len(payload) <= _KEEP_BYTES else zlib.crc32(payload)
        self.dirty = True

    def repeat(self, topic: str, payload: bytes) -> bool:
        """Whether ``payload`` is the one last taken on ``topic``."""
        last = self._last.get(topic)
        if last is None:
            return False
        if type(last) is bytes and len(payload) <= _KEEP_BYTES:
            return last == payload
        crc = zlib.crc32(last) if isinstance(last, bytes) else last
        return crc == zlib.crc32(payload)

    def snapshot(self) -> dict[str, bytes | int]:
        """A copy to save off the event loop (``save``); clears ``dirty``."""
        self.dirty = False
        return dict(self._last)

    def save(self, snapshot: dict[str, bytes | int]) -> None:
        """Write ``snapshot`` atomically (a crash leaves the previous file whole)."""
        if self.path is None:
            return
        crcs = {
            topic: (zlib.crc32(last) if isinstance(last, bytes) else last)
            for topic, last in snapshot.items()
        }
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(codec.dumps(crcs))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save the retained messages taken to %s: %s", self.path, exc)

    def _load(self, path: Path) -> None:
        try:
            data = codec.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable (%s); retained messages will be taken again once", path, exc)
            return
        if isinstance(data, dict):
            self._last = {
                topic: crc for topic, crc in data.items()
                if isinstance(topic, str) and type(crc) is int
            }

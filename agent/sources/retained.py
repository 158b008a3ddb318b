"""What each topic last gave, so that a retained message the broker delivers again (on every
subscribe: each reconnect, each restart) is taken once.

A broker marks a message retained only when it sends it because of a new subscription; the
same message reached us unmarked when it was published. So the memory holds the last payload
taken on every topic, marked or not, and a retained delivery equal to it is a repeat.

The memory is saved with each checkpoint, in the same transaction as the state that holds the
effect of what it remembers (``cut``: the topics that changed since the last one, as CRC-32s of
their payloads). A crash then never leaves it remembering a message whose effect was lost: the
broker's redelivery after the crash is taken, not skipped as a repeat.
"""

from __future__ import annotations

import zlib
from typing import Any

MAX_TOPICS = 200_000
"""Topics remembered at most; messages on further topics are taken every time."""
_KEEP_BYTES = 256  # payloads up to this are kept as they are; longer ones as their CRC-32


class RetainedMemory:
    """The last payload taken per topic, and which topics changed since the last ``cut``."""

    def __init__(self) -> None:
        self._last: dict[str, bytes | int] = {}
        self._changed: dict[str, bytes | int] = {}

    def note(self, topic: str, payload: bytes) -> None:
        """``payload`` was taken on ``topic``."""
        last = self._last
        if len(last) >= MAX_TOPICS and topic not in last:
            return
        kept = payload if len(payload) <= _KEEP_BYTES else zlib.crc32(payload)
        last[topic] = self._changed[topic] = kept

    def note_all(self, taken: dict[str, bytes]) -> None:
        """``note`` of each topic's payload (the last taken on it in a batch), as two dict
        updates when no payload is long and there is room for every topic."""
        last = self._last
        if len(last) + len(taken) > MAX_TOPICS or max(map(len, taken.values())) > _KEEP_BYTES:
            for topic, payload in taken.items():
                self.note(topic, payload)
            return
        last.update(taken)
        self._changed.update(taken)

    def repeat(self, topic: str, payload: bytes) -> bool:
        """Whether ``payload`` is the one last taken on ``topic``."""
        last = self._last.get(topic)
        if last is None:
            return False
        if type(last) is bytes and len(payload) <= _KEEP_BYTES:
            return last == payload
        crc = zlib.crc32(last) if isinstance(last, bytes) else last
        return crc == zlib.crc32(payload)

    def cut(self) -> dict[str, int]:
        """Topic to CRC-32 of what was taken on each topic that changed since the last cut, to
        be saved with the checkpoint being taken now."""
        changed, self._changed = self._changed, {}
        return {
            topic: (zlib.crc32(kept) if isinstance(kept, bytes) else kept)
            for topic, kept in changed.items()
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """What the checkpoint before a restart had saved (anything not a CRC is ignored)."""
        for topic, crc in saved.items():
            if type(crc) is int and (len(self._last) < MAX_TOPICS or topic in self._last):
                self._last.setdefault(topic, crc)

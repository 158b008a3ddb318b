"""Command ids already acted on, remembered until the command would have expired anyway, and
kept across restarts: a command runs at most once even when a broker redelivers it after
thousands of newer ones, or after the agent restarted.

Held in ``<data_dir>/commands-seen.json`` (mode 600); at most ``LIMIT`` ids (each lives at most
``commands.MAX_EXPIRY``), so the file stays small; when it is full of live ids, new commands
wait (``full``) rather than anything being forgotten early.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILE = "commands-seen.json"
LIMIT = 10_000


class SeenCommands:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE
        self.ids: dict[str, float] = {}
        """Command id: the time (device clock) after which it can no longer arrive."""

    def load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): commands seen before the restart are forgotten", self.path, exc)
            return
        if isinstance(doc, dict):
            self.ids = {str(k): float(v) for k, v in doc.items() if type(v) in (int, float)}
        self._trim(time.time())

    def __contains__(self, command_id: str) -> bool:
        return command_id in self.ids

    def full(self) -> bool:
        self._trim(time.time())
        return len(self.ids) >= LIMIT

    def add(self, command_id: str, until: float) -> None:
        self.ids[command_id] = until

    def save(self) -> None:
        """Atomically, mode 600 (blocking: call it off the event loop)."""
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(self.ids).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)

    def _trim(self, now: float) -> None:
        self.ids = {k: until for k, until in self.ids.items() if until >= now}

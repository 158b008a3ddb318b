"""The gateway's own clock: steps of the wall clock, seen against the monotonic clock.

A Raspberry Pi has no real-time clock: it boots with the time it last saved (or 1970) and NTP
steps it later, by hours or years. The monotonic clock never steps, so the difference between
the two stays constant while the wall clock only runs (or is slewed by NTP, a few hundred
microseconds a second); when it changes by more than ``STEP`` at once, the wall clock stepped.
Until the clock is believed synchronised, readings stamped with it are marked as such.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STEP = 1.0
"""A change of the wall clock against the monotonic one larger than this is a step."""
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
"""systemd-timesyncd creates this once it has synchronised the clock."""


class ClockMonitor:
    def __init__(self, flag: Path = TIMESYNC_FLAG) -> None:
        self._flag = flag
        self._offset = time.time() - time.monotonic()
        self.steps = 0
        self.last_step: float | None = None
        self.last_step_at: float | None = None
        self.synchronised = self._flag_says_synchronised()

    def check(self, wall: float | None = None, mono: float | None = None) -> float:
        """The size of the step since the last look (0.0 if none), logged and remembered."""
        wall = time.time() if wall is None else wall
        mono = time.monotonic() if mono is None else mono
        offset = wall - mono
        step = offset - self._offset
        if abs(step) <= STEP:
            if not self.synchronised:
                self.synchronised = self._flag_says_synchronised()
            return 0.0
        self._offset = offset
        self.steps += 1
        self.last_step, self.last_step_at = step, wall
        self.synchronised = True  # something (NTP, an operator) set the clock since boot
        log.warning(
            "the wall clock stepped %s by %s; modules re-anchor their clock-based closing",
            "forward" if step > 0 else "back", _span(abs(step)),
        )
        return step

    def summary(self) -> dict[str, Any]:
        return {
            "synchronised": self.synchronised,
            "steps": self.steps,
            "last_step_s": self.last_step,
            "last_step_at": self.last_step_at,
        }

    def _flag_says_synchronised(self) -> bool:
        try:
            return self._flag.exists()
        except OSError:
            return False


CLOCK = ClockMonitor()
"""The process's view of its wall clock (there is one wall clock per process)."""


def _span(seconds: float) -> str:
    seconds = float(round(seconds))  # a step of a day is read a few milliseconds short of one
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"

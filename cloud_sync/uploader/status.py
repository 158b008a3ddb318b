"""What the uploader reports: the retained status message and the ``sync`` part of health."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

SCOPE = "sync"
ERROR_NAMES = frozenset(
    {
        "connection_errors",
        "tls_errors",
        "refused",
        "resends",
        "set_aside",
        "dead_links",
        "bad_acks",
        "epoch_conflicts",
        "failovers",  # moves to the next node of [cloud] url
    }
)
"""The sync counters the status message carries under ``errors``."""


class SendRate:
    """Records acknowledged per second over the last minute or so."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)
        self.acked_records = 0

    def acked(self, count: int) -> None:
        self.acked_records += count
        self._samples.append((time.monotonic(), self.acked_records))

    def per_second(self) -> float:
        samples = self._samples
        now = time.monotonic()
        while len(samples) > 1 and now - samples[0][0] > 60:
            samples.popleft()
        if len(samples) < 2 or now - samples[0][0] <= 0:
            return 0.0
        return (samples[-1][1] - samples[0][1]) / max(1.0, now - samples[0][0])


def error_counts(totals: dict[tuple[str, str], int]) -> dict[str, int]:
    return {name: value for (scope, name), value in totals.items() if scope == SCOPE and name in ERROR_NAMES}


def clock_synced() -> bool | None:
    """Whether systemd-timesyncd says the clock is synchronised (None where it cannot tell)."""
    if os.path.isdir("/run/systemd/timesync"):
        return os.path.exists("/run/systemd/timesync/synchronized")
    return None


def clock() -> dict[str, Any]:
    return {"time": time.time(), "synced": clock_synced()}

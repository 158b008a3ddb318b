"""What the link proxy does with traffic, and how a command names it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LinkMode(StrEnum):
    """The proxy's behaviour; one at a time."""

    PASS = "pass"  # forward as it comes
    DELAY = "delay"  # forward every chunk ``delay_ms`` after it arrived
    THROTTLE = "throttle"  # forward at most ``rate`` bytes/s in each direction, over all connections
    DROP = "drop"  # close every connection and reset new ones, like a peer that went away
    HALFOPEN = "halfopen"  # forward nothing, close nothing: a silent partition


@dataclass(frozen=True)
class LinkState:
    mode: LinkMode = LinkMode.PASS
    delay_ms: float = 0.0
    rate: float = 0.0  # bytes per second

    def __str__(self) -> str:
        if self.mode is LinkMode.DELAY:
            return f"delay {self.delay_ms:g}"
        if self.mode is LinkMode.THROTTLE:
            return f"throttle {self.rate:g}"
        return self.mode.value


def parse_state(command: str) -> LinkState:
    """``pass``, ``delay MS``, ``throttle BYTES_PER_S``, ``drop``, ``halfopen``; a value may also
    follow ``=`` (``delay=200``), as in a schedule."""
    words = command.replace("=", " ").split()
    if not words:
        raise ValueError("empty command")
    try:
        mode = LinkMode(words[0].lower())
    except ValueError:
        known = ", ".join(m.value for m in LinkMode)
        raise ValueError(f"unknown mode {words[0]!r}; known: {known}") from None
    needs_value = mode in (LinkMode.DELAY, LinkMode.THROTTLE)
    if len(words) != (2 if needs_value else 1):
        usage = {LinkMode.DELAY: "delay MS", LinkMode.THROTTLE: "throttle BYTES_PER_S"}
        raise ValueError(f"usage: {usage.get(mode, mode.value)}")
    if not needs_value:
        return LinkState(mode)
    try:
        value = float(words[1])
    except ValueError:
        raise ValueError(f"{words[1]!r} is not a number") from None
    if mode is LinkMode.DELAY and value < 0:
        raise ValueError("delay must be >= 0 ms")
    if mode is LinkMode.THROTTLE and value <= 0:
        raise ValueError("throttle must be > 0 bytes/s")
    if mode is LinkMode.DELAY:
        return LinkState(mode, delay_ms=value)
    return LinkState(mode, rate=value)

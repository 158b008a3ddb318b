"""MQTT topic filters: validation and matching with the ``+`` and ``#`` wildcards."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache


def validate_filter(topic_filter: str) -> str:
    """Return the filter unchanged, or raise ``ValueError`` saying what breaks MQTT's rules."""
    if not topic_filter:
        raise ValueError("a topic filter cannot be empty")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"{topic_filter!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"{topic_filter!r}: '+' must be a whole level")
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` under MQTT's rules."""
    return _matcher(topic_filter)(topic)


@lru_cache(maxsize=1024)
def _matcher(topic_filter: str) -> Callable[[str], bool]:
    if "+" not in topic_filter and "#" not in topic_filter:
        return lambda topic: topic == topic_filter
    pattern = topic_filter.split("/")

    def match(topic: str) -> bool:
        levels = topic.split("/")
        for index, want in enumerate(pattern):
            if want == "#":
                return True
            if index >= len(levels) or (want != "+" and want != levels[index]):
                return False
        return len(levels) == len(pattern)

    return match


def fixed_prefix(topic_filter: str) -> str:
    """The levels before the first wildcard, with their trailing slash: ``sensors/#`` gives
    ``sensors/``. A sensor id is the topic after this prefix."""
    prefix: list[str] = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            break
        prefix.append(level)
    else:
        prefix.pop()  # no wildcard: the last level is the sensor id
    return "".join(level + "/" for level in prefix)

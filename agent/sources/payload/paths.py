"""Dotted paths into a decoded payload: ``"params.temperature:0.tC"``, ``"AM2301.*"``."""

from __future__ import annotations

import re

_LEVEL = re.compile(r"[^.*{}]+|\*")


def split_path(path: str, wildcards: bool = True) -> tuple[str, ...]:
    """``"params.temperature:0.tC"`` as its levels; ``ValueError`` naming what is wrong."""
    levels = tuple(path.split("."))
    for level in levels:
        if not level:
            raise ValueError(f"{path!r}: an empty level (two dots, or a dot at an end)")
        if not _LEVEL.fullmatch(level):
            raise ValueError(f"{path!r}: {level!r} is not a key; '*' must be a whole level")
        if level == "*" and not wildcards:
            raise ValueError(f"{path!r}: no '*' here, name one field")
    return levels

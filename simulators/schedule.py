"""Timed commands: ``"60:halfopen,90:pass,120:delay=200"`` runs each command at its second."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """Run ``command`` ``at`` seconds after the start."""

    at: float
    command: str


def parse_schedule(text: str) -> list[Step]:
    """The steps of ``SECONDS:COMMAND[,SECONDS:COMMAND...]``, in time order.

    A command may carry a value after ``=`` (``delay=200``); what it means is the caller's.
    """
    steps = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        at, colon, command = item.partition(":")
        try:
            seconds = float(at)
        except ValueError:
            seconds = -1.0
        if not colon or seconds < 0 or not command.strip():
            raise ValueError(f"schedule step {item!r}: expected SECONDS:COMMAND, e.g. 60:halfopen")
        steps.append(Step(seconds, command.strip()))
    return sorted(steps, key=lambda step: step.at)

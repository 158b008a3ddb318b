"""How a config's modules are wired, checked as a whole: every input must be able to receive
something, and ``sync`` may name only outputs a module has.

An input receives something when it overlaps a source's topics (an MQTT source's ``topics``;
with a payload ``format``, the fixed part of each followed by ``#``, as its readings go on
``<fixed part><sensor>``; ``<topic_prefix>#`` for a source that makes readings under a prefix)
or matches another module's stream (``<name>``, ``<name>.<output>``). A typo in ``inputs``
would otherwise pass ``check`` and the module would silently never receive a record. A config
with no source at all (one written for ``edge-agent replay``) is not checked against sources.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from agent.errors import ConfigIssue
from agent.topics import fixed_prefix, matches

DEFAULT_OUTPUT = "default"
"""The name ``sync`` gives a module's own stream (``<name>``) in a list of outputs."""


def streams(name: str, outputs: Sequence[str]) -> list[str]:
    """The streams a module instance emits on: its own, then one per named output."""
    return [name, *(f"{name}.{output}" for output in outputs)]


def synced_streams(name: str, outputs: Sequence[str], sync: bool | Sequence[str]) -> frozenset[str]:
    """The streams of a module that go to the outbox."""
    if sync is True:
        return frozenset(streams(name, outputs))
    if not sync:
        return frozenset()
    return frozenset(name if output == DEFAULT_OUTPUT else f"{name}.{output}" for output in sync)


def check_wiring(file: str, sources: Sequence[Any], plans: Sequence[Any]) -> list[ConfigIssue]:
    """Every problem of the wiring: inputs that can receive nothing, ``sync`` naming an output
    a module does not have. ``plans`` are ``config.ModulePlan``s (spec, cls)."""
    issues: list[ConfigIssue] = []
    source_filters = [f for source in sources for f in _source_filters(source)]
    for index, plan in enumerate(plans):
        where = f"modules[{index}]"
        issues += _sync_issues(file, where, plan)
        others = [s for other in plans if other is not plan
                  for s in streams(other.spec.name, other.cls.outputs)]
        for label, topic_filter in _labelled(plan.spec.inputs):
            if any(matches(topic_filter, stream) for stream in others):
                continue
            if not sources or any(overlap(topic_filter, f) for f in source_filters):
                continue
            issues.append(ConfigIssue(
                file, f"{where}.inputs{label}",
                f"{topic_filter!r} matches no source's topics and no module's stream"
                + _did_you_mean(topic_filter, others + source_filters),
            ))
    return issues


def _labelled(inputs: Any) -> list[tuple[str, str]]:
    """Each input filter with its place: ``[0]`` in a list, ``.temp`` in a table."""
    if isinstance(inputs, dict):
        return [(f".{name}", f) for name, f in inputs.items()]
    return [(f"[{number}]", f) for number, f in enumerate(inputs)]


def _sync_issues(file: str, where: str, plan: Any) -> list[ConfigIssue]:
    sync = plan.spec.sync
    if isinstance(sync, bool):
        return []
    known = [DEFAULT_OUTPUT, *plan.cls.outputs]
    return [
        ConfigIssue(file, f"{where}.sync[{number}]",
                    f"{output!r} is not an output of this module (outputs: {', '.join(known)})"
                    + _did_you_mean(output, known))
        for number, output in enumerate(sync) if output not in known
    ]


def _source_filters(source: Any) -> list[str]:
    topics = getattr(source, "topics", None)
    if topics:
        if getattr(source, "format", "reading") != "reading":  # mapped: <fixed prefix><sensor>
            return [f"{fixed_prefix(topic)}#" for topic in topics]
        return list(topics)
    return [f"{getattr(source, 'topic_prefix', None) or 'sensors/'}#"]


def overlap(a: str, b: str) -> bool:
    """True when some topic matches both filters."""
    left, right = a.split("/"), b.split("/")
    for x, y in zip(left, right, strict=False):
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
    if len(left) == len(right):
        return True
    longer = left if len(left) > len(right) else right
    return longer[min(len(left), len(right))] == "#"  # 'a/#' also matches 'a'


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(dict.fromkeys(candidates)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""

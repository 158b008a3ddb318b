"""How ``edge-agent check`` words a config's problems: every one at once, each at a path an
operator can find in the file.

- pydantic's errors become ``ConfigIssue``s whose ``path`` is the key path (``modules[1].with.every``,
  stable for scripts and the console) and whose printed form names the entry too
  (``modules[1](climate).with.every``), since nobody counts ``[[modules]]`` tables from zero;
- an unknown key gets the nearest known one (``did you mean 'topics'?``);
- checks that span entries (a name used twice, two connections with one client id) run on the
  raw file, so they are reported beside every other error instead of after they are fixed.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError

from agent.errors import ConfigIssue

_ENTRY = re.compile(r"^(sources|modules)\[(\d+)\]")

Narrow = Callable[[Any, Any], Any]
"""The model that really validated a raw value where the declared type is a base class (a
source's ``Config``, found by its ``type``); the declared type when it cannot tell."""


def issues_from(
    file: str, prefix: str, exc: ValidationError, model: type[BaseModel],
    raw: Any = None, narrow: Narrow | None = None,
) -> list[ConfigIssue]:
    """One issue per pydantic error of validating ``raw`` against ``model``; ``prefix`` is where
    it sits."""
    issues = []
    for error in exc.errors():
        loc = error["loc"]
        path = prefix
        for part, skip in zip(loc, _tags(model, loc), strict=True):
            if skip:
                continue  # pydantic names the union member; the operator knows it as `type`
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown key" + _did_you_mean(model, loc, raw, narrow)
        elif error["type"] == "missing":
            reason = "required"
        elif error["type"] in ("bool_type", "bool_parsing"):  # strict: "yes" and 1 are not booleans
            reason = f"use true or false (a TOML boolean), not {error['input']!r}"
        issues.append(ConfigIssue(file, path, reason))
    return issues


def named(issues: list[ConfigIssue], raw: dict[str, Any]) -> list[ConfigIssue]:
    """The issues, each printed with the name of the source or module it is in."""
    return [_named(issue, raw) for issue in issues]


def _named(issue: ConfigIssue, raw: dict[str, Any]) -> ConfigIssue:
    match = _ENTRY.match(issue.path)
    if match is None:
        return issue
    entries = raw.get(match[1])
    index = int(match[2])
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        return issue
    shown = f"{match[0]}({name[:64]}){issue.path[match.end():]}"
    return ConfigIssue(issue.file, issue.path, issue.reason, shown)


def cross_checks(file: str, raw: dict[str, Any]) -> list[ConfigIssue]:
    """Checks between entries, on the raw file so that they run whatever else is wrong."""
    issues = []
    seen: dict[str, str] = {}
    for kind in ("sources", "modules"):
        for index, entry in _entries(raw, kind):
            name = entry.get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                reason = f"name {name!r} is used twice (first by {seen[name]})"
                issues.append(ConfigIssue(file, f"{kind}[{index}].name", reason))
            else:
                seen[name] = f"{kind}[{index}]"
    issues += _client_ids(file, raw)
    return issues


def _client_ids(file: str, raw: dict[str, Any]) -> list[ConfigIssue]:
    """Two connections with one client id throw each other off the broker, endlessly."""
    device_id = raw.get("device_id")
    if not isinstance(device_id, str):
        return []
    taken = {device_id: "the [cloud] uploader"} if isinstance(raw.get("cloud"), dict) else {}
    issues = []
    for index, source in _entries(raw, "sources"):
        if source.get("type") != "mqtt" or not isinstance(source.get("name"), str):
            continue
        client_id = source.get("client_id") or f"{device_id}-{source['name']}"
        if not isinstance(client_id, str):
            continue
        if client_id in taken:
            issues.append(ConfigIssue(
                file, f"sources[{index}].client_id", f"client id {client_id!r} is {taken[client_id]}'s too"
            ))
        else:
            taken[client_id] = f"sources[{index}]"
    return issues


def _entries(raw: dict[str, Any], kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
    entries = raw.get(kind)
    if isinstance(entries, list):
        for index, entry in enumerate(entries):
            if isinstance(entry, dict):
                yield index, entry


# -- walking a model along an error's location ----------------------------------------------------


def _tags(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[bool]:
    """For each part of ``loc``: True where it is a union member's tag, not a key of the file."""
    skips = []
    node: Any = model
    for part in loc:
        node, skipped = _step(node, part)
        skips.append(skipped)
    return skips


def _did_you_mean(model: type[BaseModel], loc: tuple[int | str, ...], raw: Any, narrow: Narrow | None) -> str:
    node: Any = model
    for part in loc[:-1]:
        node, _ = _step(node, part)
        raw = _raw_step(raw, part)
        if narrow is not None:
            node = narrow(node, raw)
    node = _unwrap(node)
    if not (isinstance(node, type) and issubclass(node, BaseModel)) or not isinstance(loc[-1], str):
        return ""
    known = [field.alias or name for name, field in node.model_fields.items()]
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _raw_step(raw: Any, part: int | str) -> Any:
    if isinstance(part, int):
        return raw[part] if isinstance(raw, list) and part < len(raw) else None
    return raw.get(part) if isinstance(raw, dict) else None


def _step(node: Any, part: int | str) -> tuple[Any, bool]:
    """The type one part further along, and whether the part was a union's tag."""
    node = _unwrap(node)
    if node is None:
        return None, False
    origin, args = typing.get_origin(node), typing.get_args(node)
    if isinstance(part, int):
        return (args[0] if origin in (list, tuple, set) and args else None), False
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if part in (name, field.alias):
                return field.annotation, False
        return None, False
    if origin is dict and len(args) == 2:
        return args[1], False
    if origin in (Union, types.UnionType):
        for member in args:
            if _tag_of(member) == part:
                return member, True
    return None, False


def _unwrap(node: Any) -> Any:
    """Strip ``Annotated`` and ``X | None``; a union of models stays a union."""
    while True:
        origin = typing.get_origin(node)
        if origin is typing.Annotated:
            node = typing.get_args(node)[0]
        elif origin in (Union, types.UnionType):
            members = [m for m in typing.get_args(node) if m is not type(None)]
            if len(members) != 1:
                return node
            node = members[0]
        else:
            return node


def _tag_of(member: Any) -> str | None:
    """The ``type`` literal of a tagged union's member (``"mqtt"`` for the MQTT source)."""
    member = _unwrap(member)
    if not (isinstance(member, type) and issubclass(member, BaseModel)) or "type" not in member.model_fields:
        return None
    annotation = member.model_fields["type"].annotation
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        return str(values[0]) if len(values) == 1 else None
    return None

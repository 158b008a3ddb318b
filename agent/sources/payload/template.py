"""Sensor id templates such as ``"{topic[1]}/{field}"``, compiled once per source.

A template is rendered in two steps because one message gives many readings: ``head`` fills in
what depends on the message (topic levels, ``{item.PATH}``, ``{index}``) once, and ``sensor``
adds what depends on the field. With the common shape ``"<message parts>{field}"`` the second
step is one string concatenation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.sources.payload.paths import split_path

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SLICE = re.compile(r"^(topic|field)(?:\[(-?\d+)\]|\[(-?\d*):(-?\d*)\])?$")

Part = tuple[str, Any]
"""(kind, argument): ``("text", "abc")``, ``("topic", slice|int|None)``, ``("field", ...)``,
``("name", None)``, ``("index", None)``, ``("item", levels)``."""


def compile_template(text: str) -> Template:
    """The compiled template; ``ValueError`` naming the placeholder that is wrong."""
    parts: list[Part] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        _literal(text[pos : match.start()], text, parts)
        parts.append(_placeholder(match[1], text))
        pos = match.end()
    _literal(text[pos:], text, parts)
    if not parts:
        raise ValueError("an empty sensor template")
    return Template(tuple(parts))


def _literal(chunk: str, text: str, parts: list[Part]) -> None:
    if "{" in chunk or "}" in chunk:
        raise ValueError(f"{text!r}: an unmatched brace")
    if chunk:
        parts.append(("text", chunk))


def _placeholder(inner: str, text: str) -> Part:
    inner = inner.strip()
    if inner in ("name", "index"):
        return (inner, None)
    if inner.startswith("item."):
        return ("item", split_path(inner[5:], wildcards=False))
    match = _SLICE.match(inner)
    if match is None:
        raise ValueError(
            f"{text!r}: unknown placeholder {{{inner}}}; use {{topic}}, {{topic[N]}}, "
            "{topic[A:B]}, {field}, {field[N]}, {name}, {index} or {item.PATH}"
        )
    kind, index, start, stop = match.groups()
    if index is not None:
        return (kind, int(index))
    if start is not None or stop is not None:
        return (kind, slice(int(start) if start else None, int(stop) if stop else None))
    return (kind, None)


def _levels(levels: list[str] | tuple[str, ...], arg: Any) -> str:
    if arg is None:
        return "/".join(levels)
    if type(arg) is int:
        try:
            return levels[arg]
        except IndexError:
            return ""
    return "/".join(levels[arg])


def item_text(item: Any, path: tuple[str, ...]) -> str:
    """The value at ``path`` in ``item`` as sensor-id text: a string or a number, else ''."""
    node = item
    for level in path:
        if type(node) is not dict:
            return ""
        node = node.get(level)
    if type(node) is str:
        return node
    if type(node) is int or type(node) is float:
        return str(node)
    return ""


@dataclass(frozen=True)
class Template:
    parts: tuple[Part, ...]

    @property
    def per_item(self) -> bool:
        """Whether the message part depends on the object (``{item.PATH}``, ``{index}``), not
        only on the topic (then it can be cached by topic)."""
        return any(kind in ("item", "index") for kind, _ in self.parts)

    @property
    def field_last(self) -> bool:
        """The template ends in ``{field}`` and names the field nowhere else."""
        fieldish = [i for i, (kind, _) in enumerate(self.parts) if kind in ("field", "name")]
        return fieldish == [len(self.parts) - 1] and self.parts[-1] == ("field", None)

    def head(self, levels: list[str], item: Any = None, index: int = 0) -> tuple[str | None, ...]:
        """The message's parts rendered; field parts stay None for ``sensor``."""
        out: list[str | None] = []
        for kind, arg in self.parts:
            if kind == "text":
                out.append(arg)
            elif kind == "topic":
                out.append(_levels(levels, arg))
            elif kind == "item":
                out.append(item_text(item, arg))
            elif kind == "index":
                out.append(str(index))
            else:
                out.append(None)
        return tuple(out)

    def sensor(self, head: tuple[str | None, ...], field: tuple[str, ...]) -> str:
        """The sensor id of ``field`` (its path levels) in a message whose ``head`` is given."""
        out = []
        for (kind, arg), rendered in zip(self.parts, head, strict=True):
            if rendered is not None:
                out.append(rendered)
            elif kind == "field":
                out.append(_levels(field, arg))
            else:  # name
                out.append(field[-1])
        return "".join(out)

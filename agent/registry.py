"""Finding module and source classes: the ``edge_agent.modules`` and ``edge_agent.sources`` entry
points, or ``path/to/file.py:Class``.

Built-in modules and sources are registered through the same entry point groups as third-party
packages.
A ``use`` value names a file exactly when ``parse_file_use`` says so: everywhere that asks (the
loader, the remote-config rules, the console's check) asks it, so no two readings of one value
can disagree.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from agent.api import Module, Source
from agent.errors import ModuleLoadError

ENTRY_POINT_GROUP = "edge_agent.modules"
SOURCE_GROUP = "edge_agent.sources"

T = TypeVar("T")


class FileUse(NamedTuple):
    """A ``use`` value that names a Python file and a class in it."""

    file: str
    class_name: str


def parse_file_use(use: str) -> FileUse | None:
    """``path/x.py:Class`` as its file and class; None when ``use`` names no file (a
    registered name). The class is what follows the *last* colon and the file must end in
    ``.py``: ``x.py:/y.pyc:C`` names the file ``x.py:/y.pyc``, which is not Python, so no file."""
    file_part, colon, class_name = use.rpartition(":")
    if not colon or not file_part.endswith(".py") or not class_name.isidentifier():
        return None
    return FileUse(file_part, class_name)


def names_a_file(use: str) -> bool:
    """Whether ``use`` looks like anything but a registered name (a path, a colon, a suffix):
    such a value is never looked up among entry points."""
    return parse_file_use(use) is not None or any(c in use for c in ":/\\") or use.endswith(".py")


@cache
def available_modules() -> dict[str, str]:
    """Registered module names, each with the ``package.module:Class`` it points at."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


@cache
def available_sources() -> dict[str, str]:
    """Registered source types, each with the ``package.module:Class`` it points at."""
    return {ep.name: ep.value for ep in entry_points(group=SOURCE_GROUP)}


def resolve_module(use: str, base_dir: Path | None = None) -> type[Module[Any]]:
    """The module class for a ``use`` value from the config; a relative file path is taken
    relative to ``base_dir`` (the config file's folder) when given."""
    file_use = parse_file_use(use)
    if file_use is not None:
        path = Path(file_use.file).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return _checked(use, _load_from_file(path.resolve(), file_use, use), Module)
    if names_a_file(use):
        raise ModuleLoadError(use, "a module file is named path/to/file.py:ClassName")
    return resolve_registered(use)


def resolve_source(kind: str, base_dir: Path | None = None) -> type[Source[Any]]:
    """The source class for a ``type`` value from the config: a registered name, or
    ``path/to/file.py:Class`` (relative to ``base_dir`` when given)."""
    file_use = parse_file_use(kind)
    if file_use is not None:
        path = Path(file_use.file).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return _checked(kind, _load_from_file(path.resolve(), file_use, kind), Source)
    if names_a_file(kind):
        raise ModuleLoadError(kind, "a source file is named path/to/file.py:ClassName")
    return resolve_registered_source(kind)


@cache
def resolve_registered_source(kind: str) -> type[Source[Any]]:
    """A registered source's class (imports only the installed package it points at)."""
    return _load_entry_point(kind, SOURCE_GROUP, available_sources(), Source, "source")


@cache  # scanning the entry points takes ~30 ms: once per name, not once per [[modules]] entry
def resolve_registered(use: str) -> type[Module[Any]]:
    """A registered module's class (imports only the installed package it points at)."""
    return _load_entry_point(use, ENTRY_POINT_GROUP, available_modules(), Module, "module")


def _load_entry_point(
    use: str, group: str, registered: dict[str, str], base: type[T], what: str
) -> type[T]:
    if use not in registered:
        names = ", ".join(sorted(registered)) or "none"
        raise ModuleLoadError(use, f"no {what} named {use!r} is registered (available: {names})")
    found = {ep.value: ep for ep in entry_points(group=group, name=use)}
    if len(found) > 1:  # the same class seen twice (a stale egg-info beside the install) is fine
        raise ModuleLoadError(use, f"registered by several packages: {', '.join(sorted(found))}")
    (entry_point,) = found.values()
    try:
        cls = entry_point.load()
    except Exception as exc:  # a broken plugin must not stop the others being listed
        raise ModuleLoadError(use, f"cannot import {entry_point.value}: {exc!r}") from exc
    return _checked(use, cls, base)


def _load_from_file(path: Path, file_use: FileUse, use: str) -> Any:
    if not path.is_file():
        raise ModuleLoadError(use, f"file {path} not found")
    module_name = f"edge_agent_user_modules.{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModuleLoadError(use, f"cannot load {file_use.file} as Python")
    code = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = code
    try:
        spec.loader.exec_module(code)
    except Exception as exc:
        del sys.modules[module_name]
        raise ModuleLoadError(use, f"{file_use.file} failed to import: {exc!r}") from exc
    except BaseException as exc:  # SystemExit or KeyboardInterrupt from a module's top level
        del sys.modules[module_name]
        raise ModuleLoadError(use, f"{file_use.file} stopped while importing: {exc!r}") from None
    if not hasattr(code, file_use.class_name):
        raise ModuleLoadError(use, f"{file_use.file} has no class {file_use.class_name}")
    return getattr(code, file_use.class_name)


def _checked(use: str, cls: Any, base: type[T]) -> type[T]:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ModuleLoadError(use, f"{cls!r} is not a subclass of agent.{base.__name__}")
    return cls

"""Finding module classes: the ``edge_agent.modules`` entry points, or ``path/to/file.py:Class``.

Built-in modules are registered through the same entry point group as third-party packages.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from agent.api import Module
from agent.errors import ModuleLoadError

ENTRY_POINT_GROUP = "edge_agent.modules"


@cache
def available_modules() -> dict[str, str]:
    """Registered module names, each with the ``package.module:Class`` it points at."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_module(use: str, base_dir: Path | None = None) -> type[Module[Any]]:
    """The module class for a ``use`` value from the config; a relative file path is taken
    relative to ``base_dir`` (the config file's folder) when given."""
    if ":" in use and use.split(":", 1)[0].endswith(".py"):
        file_part, class_name = use.rsplit(":", 1)
        path = Path(file_part).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return _load_from_file(str(path.resolve()), class_name, use)
    registered = available_modules()
    if use not in registered:
        names = ", ".join(sorted(registered)) or "none"
        raise ModuleLoadError(use, f"no module named {use!r} is registered (available: {names})")
    (entry_point,) = entry_points(group=ENTRY_POINT_GROUP, name=use)
    try:
        cls = entry_point.load()
    except Exception as exc:  # a broken plugin must not stop the others being listed
        raise ModuleLoadError(use, f"cannot import {entry_point.value}: {exc!r}") from exc
    return _checked(use, cls)


def _load_from_file(file_path: str, class_name: str, use: str) -> type[Module[Any]]:
    path = Path(file_path)
    file_part = use.rsplit(":", 1)[0]
    if not path.is_file():
        raise ModuleLoadError(use, f"file {path} not found")
    module_name = f"edge_agent_user_modules.{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModuleLoadError(use, f"cannot load {file_part} as Python")
    code = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = code
    try:
        spec.loader.exec_module(code)
    except Exception as exc:
        del sys.modules[module_name]
        raise ModuleLoadError(use, f"{file_part} failed to import: {exc!r}") from exc
    if not hasattr(code, class_name):
        raise ModuleLoadError(use, f"{file_part} has no class {class_name}")
    return _checked(use, getattr(code, class_name))


def _checked(use: str, cls: Any) -> type[Module[Any]]:
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise ModuleLoadError(use, f"{cls!r} is not a subclass of agent.Module")
    return cls

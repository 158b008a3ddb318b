"""The import rules of the code base, read from the source with ``ast`` (docs/design/005-code-map.md).

- Device code (``agent/``, ``cloud_sync/uploader/``, ``cloud_sync/protocol/``) never imports
  ``cloud_sync/server/``: a gateway's install never needs the server's code.
- In ``agent/``, only ``agent/cli/`` imports click: the daemon's fast path stays light.
- In ``agent/`` and ``cloud_sync/``, only ``cloud_sync/mqtt.py`` imports paho or aiomqtt: one
  file knows the client library (and the version range pyproject.toml pins it to).
- No import circles between our modules, counting every import in a file: deferred imports and
  ``if TYPE_CHECKING:`` blocks included, so a circle cannot hide behind either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "modules", "cloud_sync", "simulators")
DEVICE = ("agent", "cloud_sync.uploader", "cloud_sync.protocol")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports, anywhere in the file, with the line of the import."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from this package, one level per dot after the first
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, base]).strip(".")
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in SOURCES else base, node.lineno))
    return found


GRAPH = {name: _imports(name, path) for name, path in SOURCES.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_rules_see_the_code():
    assert {"agent.supervisor", "cloud_sync.uploader.uploader", "cloud_sync.server.ingest"} <= set(SOURCES)
    assert ("cloud_sync.protocol", 0) not in GRAPH["cloud_sync.uploader.uploader"]
    assert any(target == "cloud_sync.protocol" for target, _ in GRAPH["cloud_sync.uploader.uploader"])


@pytest.mark.parametrize("layer", DEVICE)
def test_device_code_never_imports_the_server(layer: str):
    offenders = [
        f"{name} line {line} imports {target}"
        for name, imports in GRAPH.items()
        if _within(name, layer)
        for target, line in imports
        if _within(target, "cloud_sync.server")
    ]
    assert offenders == []


def test_only_the_cli_imports_click():
    offenders = [
        f"{name} line {line}"
        for name, imports in GRAPH.items()
        if _within(name, "agent") and not _within(name, "agent.cli")
        for target, line in imports
        if _within(target, "click")
    ]
    assert offenders == []


def test_only_cloud_sync_mqtt_imports_the_mqtt_clients():
    offenders = [
        f"{name} line {line} imports {target}"
        for name, imports in GRAPH.items()
        if (_within(name, "agent") or _within(name, "cloud_sync")) and name != "cloud_sync.mqtt"
        for target, line in imports
        if _within(target, "paho") or _within(target, "aiomqtt")
    ]
    assert offenders == []
    assert any(_within(target, "aiomqtt") for target, _ in GRAPH["cloud_sync.mqtt"])


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    edges = {
        name: sorted({target for target, _ in imports if target in SOURCES and target != name})
        for name, imports in GRAPH.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return components


def test_no_import_circles():
    assert _cycles() == []


def test_a_circle_would_be_seen(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(GRAPH, "agent.codec", [*GRAPH["agent.codec"], ("agent.supervisor", 1)])
    assert any("agent.codec" in cycle for cycle in _cycles())

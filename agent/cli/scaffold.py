"""``edge-agent modules new NAME [--kind source]``: a pip-installable package with a module (or a
source), a passing test and a README, ready to ``pip install -e .`` into the agent's environment
and ``use`` (or ``type``) by name."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from string import Template

import click

from agent import __version__
from agent.cli.scaffold_source import SOURCE_FILES
from agent.registry import available_modules, available_sources

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ScaffoldError(Exception):
    """The package cannot be written: a bad name, a taken name, a directory in the way."""


PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$title: $what for Edge Agent."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["tidegate>=$agent_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

# This line is what makes `$key = "$name"` work once the package is installed.
[project.entry-points."$group"]
$name = "$package:$cls"

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

MODULE = Template('''\
"""$title: a processing module for Edge Agent."""

from __future__ import annotations

import math

from agent import Module, ModuleConfig, Record


class ${cls}Config(ModuleConfig):
    factor: float = 1.0
    """Every value is multiplied by this."""


class $cls(Module[${cls}Config]):
    """Scales each reading by ``factor`` and numbers the readings of each sensor; the numbering
    survives restarts because it lives in ``context.state``."""

    Config = ${cls}Config
    description = "Scales readings and numbers them per sensor (edit me)."

    async def start(self) -> None:
        self.seen: dict[str, int] = self.context.state.setdefault("seen", {})

    def process(self, record: Record) -> None:
        value = record.data.get("value")
        if type(value) not in (int, float) or not math.isfinite(value):
            self.context.counters.incr("not_a_number")  # counted, never a crash
            return
        sensor = record.data.get("sensor", record.topic)
        self.seen[sensor] = self.seen.get(sensor, 0) + 1
        self.context.emit(
            {"sensor": sensor, "value": value * self.config.factor, "seen": self.seen[sensor]},
            ts=record.ts,
        )
''')

TEST = Template('''\
"""Tests through the Edge Agent harness (the `harness` fixture comes with edge-agent)."""

from agent.testing import reading

from $package import $cls


def test_scales_and_numbers_readings(harness):
    module = harness($cls, factor=2.0)
    out = module.run([reading("t1", 0, 1.5), reading("t1", 1, "oops"), reading("t1", 2, 2.0)])
    assert [record.data["value"] for record in out] == [3.0, 4.0]
    assert [record.data["seen"] for record in out] == [1, 2]
    assert module.counters["not_a_number"] == 1


def test_numbering_survives_a_restart(harness):
    module = harness($cls)
    module.feed([reading("t1", 0, 1.0)])
    module.restart()
    out = module.run([reading("t1", 1, 1.0)])
    assert out[-1].data["seen"] == 2
''')

README = Template('''\
# $dist

$title: a processing module for Edge Agent, registered as `$name`.

## Develop

```sh
pip install -e ".[test]"     # into the same environment as edge-agent
pytest                        # the tests run the module through edge-agent's harness
```

Try it on recorded readings (one `{"sensor", "ts", "value"}` JSON object a line) before
deploying:

```sh
edge-agent replay -c agent.toml --input readings.jsonl
```

## Use

```toml
[[modules]]
name = "${name}_1"
use = "$name"
inputs = ["sensors/#"]
sync = true
[modules.with]
factor = 1.0
```

`edge-agent modules` lists it once installed; `edge-agent check -c agent.toml` validates the
`[modules.with]` table against `${cls}Config`.

## Ship

`pip wheel --no-deps -w dist .` makes a wheel to copy to the gateway and
`pip install` there into the agent's environment; then restart the agent (a new package is
found at start-up, not on SIGHUP).
''')


def scaffold(name: str, directory: Path, kind: str = "module") -> Path:
    """Write the package for module (or source) ``name`` under ``directory``; return the
    package's folder."""
    if not _NAME.match(name):
        raise ScaffoldError(
            f"{name!r}: use 1 to 40 lowercase letters, digits or '_', starting with a letter "
            "(it becomes the `use` name and part of a Python package name)"
        )
    if name in (available_modules() if kind == "module" else available_sources()):
        raise ScaffoldError(f"a {kind} named {name!r} is already registered: pick another name")
    values = {
        "name": name,
        "package": f"edge_agent_{name}",
        "dist": f"edge-agent-{name.replace('_', '-')}",
        "cls": "".join(part.capitalize() for part in name.split("_") if part),
        "title": name.replace("_", " ").capitalize(),
        "agent_version": __version__,
        "what": "a processing module" if kind == "module" else "a source of readings",
        "group": f"edge_agent.{kind}s",
        "key": "use" if kind == "module" else "type",
    }
    root = directory / values["dist"]
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root} exists and is not empty")
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{values['package']}/__init__.py": MODULE,
        f"tests/test_{name}.py": TEST,
    } if kind == "module" else {
        "pyproject.toml": PYPROJECT,
        "README.md": SOURCE_FILES["readme"],
        f"{values['package']}/__init__.py": SOURCE_FILES["source"],
        f"tests/test_{name}.py": SOURCE_FILES["test"],
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.substitute(values))
    (root / ".gitignore").write_text("__pycache__/\n*.egg-info/\nbuild/\ndist/\n")
    return root


@click.command("new")
@click.argument("name")
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
    show_default=True, help="Where to create the package folder.",
)
@click.option(
    "--kind", type=click.Choice(["module", "source"]), default="module", show_default=True,
    help="A processing module, or a source of readings.",
)
def new_command(name: str, directory: Path, kind: str) -> None:
    """Write a pip-installable package with a new module (or source) NAME, a passing test and a
    README."""
    try:
        root = scaffold(name, directory, kind)
    except (ScaffoldError, OSError) as exc:
        click.echo(f"edge-agent modules new: {exc}", err=True)
        sys.exit(2)
    click.echo(
        f"wrote {root}/\n\n"
        f"  cd {root}\n"
        f"  pip install -e '.[test]'   # into the agent's environment\n"
        f"  pytest\n\n"
        + (f'then `use = "{name}"` in a [[modules]] entry' if kind == "module"
           else f'then `type = "{name}"` in a [[sources]] entry')
        + f"; see {root / 'README.md'}"
    )

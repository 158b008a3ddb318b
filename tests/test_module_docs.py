"""Every built-in module ships a docs page whose sample config validates and which names every
key of its config."""

from __future__ import annotations

import re
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agent.config import load_config
from agent.registry import ENTRY_POINT_GROUP, resolve_module

DOCS = Path(__file__).resolve().parent.parent / "docs" / "modules"
BUILT_IN = sorted(
    ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)
    if ep.dist is not None and ep.dist.name == "tidegate"
)


def toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def config_keys(model: type[BaseModel]) -> set[str]:
    """Every key a config accepts, nested models (rules, detectors) included."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys.add(info.alias or name)
        for candidate in _models_in(info.annotation):
            keys |= config_keys(candidate)
    return keys


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in getattr(annotation, "__args__", ()) + getattr(annotation, "__metadata__", ()):
        found += _models_in(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and origin is not annotation:
        found += _models_in(origin)
    return found


def test_the_built_in_modules_are_registered() -> None:
    assert sorted(
        ["anomaly", "deadband", "join", "onnx", "resample", "threshold", "transform", "window"]
    ) == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_module_has_a_page_naming_every_config_key(name: str) -> None:
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"{name} has no docs page at {page}"
    text = page.read_text()
    assert text.startswith(f"# `{name}`")
    missing = sorted(key for key in config_keys(resolve_module(name).Config)
                     if f"`{key}`" not in text)
    assert not missing, f"docs/modules/{name}.md does not mention {missing}"


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_sample_config_validates(name: str, tmp_path: Path, monkeypatch) -> None:
    text = (DOCS / f"{name}.md").read_text()
    blocks = [block for block in toml_blocks(text) if "[[modules]]" in block]
    assert blocks, f"docs/modules/{name}.md has no sample [[modules]] block"
    monkeypatch.chdir(tmp_path)
    for index, block in enumerate(blocks):
        for model in re.findall(r'^model = "(.+)"$', block, flags=re.M):
            Path(model).parent.mkdir(parents=True, exist_ok=True)
            Path(model).write_bytes(b"")  # the config only checks the file is there
        if name == "onnx":
            pytest.importorskip("onnxruntime", reason="the onnx sample needs the ml extra")
        config = tmp_path / f"sample{index}.toml"
        config.write_text('device_id = "docs"\ndata_dir = "data"\n' + textwrap.dedent(block))
        loaded = load_config(config)  # raises ConfigError naming the key if the sample is bad
        assert [plan.spec.use for plan in loaded.modules] == [name]


def test_the_writers_guide_code_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    """docs/modules.md: the hello-world fits in 15 lines, the stateful module and its tests
    pass, and the hello-world replays as the page says."""
    import subprocess
    import sys

    guide = (DOCS.parent / "modules.md").read_text()
    hello, crossings, tests = re.findall(r"```python\n(.*?)```", guide, flags=re.S)[:3]
    assert len(hello.strip().splitlines()) <= 15
    (tmp_path / "hello.py").write_text(hello)
    (tmp_path / "crossings.py").write_text(crossings)
    (tmp_path / "test_crossings.py").write_text(tests)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_crossings.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    monkeypatch.chdir(tmp_path)  # `use = "hello.py:Hello"` is relative to the working directory
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "gw"\ndata_dir = "data"\n' + toml_blocks(guide)[0])
    from click.testing import CliRunner

    from agent.cli.main import main

    result = CliRunner().invoke(
        main, ["replay", "-c", str(config), "--input", "-"],
        input='{"sensor": "t1", "ts": 1700000000, "value": 21.5}\n',
    )
    expected = '{"stream":"hello","ts":1700000000.0,"data":{"sensor":"t1","text":"bonjour, t1"}}'
    assert expected in guide
    assert result.stdout.strip() == expected

"""Every built-in source type has a page in docs/sources/ whose sample config `edge-agent check`
accepts and which names every key of its config. (The MQTT source's keys are in
docs/configuration.md, beside its payload formats.)"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from agent.config import load_config
from agent.registry import SOURCE_GROUP, resolve_source

DOCS = Path(__file__).resolve().parent.parent / "docs"
BUILT_IN = sorted({
    ep.name for ep in entry_points(group=SOURCE_GROUP)
    if ep.dist is not None and ep.dist.name == "tidegate"
})


def toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_the_built_in_sources_are_registered() -> None:
    assert {"mqtt", "simulator", "sysfs", "exec", "tail"} <= set(BUILT_IN)


@pytest.mark.parametrize("kind", [kind for kind in BUILT_IN if kind != "mqtt"])
def test_every_source_has_a_page_with_a_sample_that_checks_and_every_key(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPCUA_PASSWORD", "x")  # the opcua sample's password_env
    page = DOCS / "sources" / f"{kind}.md"
    assert page.is_file(), f"{kind} has no page at {page}"
    text = page.read_text()
    samples = [block for block in toml_blocks(text) if "device_id" in block]
    assert samples, f"{page} has no complete sample config"
    for index, sample in enumerate(samples):
        path = tmp_path / f"{kind}-{index}.toml"
        path.write_text(sample)
        loaded = load_config(path)
        assert any(source.type == kind for source in loaded.agent.sources)
    keys = set(resolve_source(kind).Config.model_fields) - {"type", "name"}
    missing = sorted(key for key in keys if f"`{key}`" not in text)
    assert not missing, f"{page} does not name {missing}"


def test_configuration_and_the_overview_name_every_source_type() -> None:
    overview = (DOCS / "sources.md").read_text()
    configuration = (DOCS / "configuration.md").read_text()
    for kind in BUILT_IN:
        assert f"`{kind}`" in overview, f"docs/sources.md does not list {kind}"
        assert f"`{kind}`" in configuration or f'"{kind}"' in configuration, kind

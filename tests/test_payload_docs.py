"""Every payload format has its page in docs/sources/, citing the firmware's documentation, with
sample configs that `edge-agent check` accepts; docs/configuration.md names every key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import MqttSourceConfig, load_config
from agent.sources.payload import FORMATS, PayloadConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [fmt for fmt in FORMATS if fmt != "reading"]


def samples(page: Path) -> list[str]:
    return [block for block in re.findall(r"```toml\n(.*?)```", page.read_text(), flags=re.S)
            if "device_id" in block]


@pytest.mark.parametrize("fmt", PAGES)
def test_every_format_has_a_page_whose_samples_check(fmt: str, tmp_path: Path) -> None:
    page = DOCS / "sources" / f"{fmt}.md"
    assert page.is_file(), f"{fmt} has no page at {page}"
    if fmt != "json":
        assert "https://" in page.read_text(), f"{page} cites no documentation"
    found = samples(page)
    assert found, f"{page} has no complete sample config"
    for index, sample in enumerate(found):
        path = tmp_path / f"{fmt}-{index}.toml"
        path.write_text(sample)
        result = subprocess.run([sys.executable, "-m", "agent", "check", "-c", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{page} sample {index}: {result.stdout}{result.stderr}"
        sources = load_config(path).agent.sources
        assert any(getattr(source, "format", None) == fmt for source in sources)


def test_configuration_names_every_key_of_the_mapping() -> None:
    text = (DOCS / "configuration.md").read_text()
    added = {"exclude", "format", "retained", "payload"}
    assert added <= set(MqttSourceConfig.model_fields)
    keys = [*PayloadConfig.model_fields, *sorted(added), "max_clock_skew"]
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"docs/configuration.md does not name {missing}"
    for fmt in FORMATS:
        assert f"`{fmt}`" in text, fmt


def test_the_readme_configs_check(tmp_path: Path) -> None:
    found = samples(DOCS.parent / "README.md")
    assert any('format = "zigbee2mqtt"' in sample for sample in found)
    for index, sample in enumerate(found):
        path = tmp_path / f"readme-{index}.toml"
        path.write_text(sample)
        load_config(path)

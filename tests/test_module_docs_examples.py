"""The examples of docs/modules.md are files the tests run: each is shown in the chapter as it
is, does what the chapter says through the harness, and its config passes ``check``."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from agent.api import Record
from agent.config import load_config
from agent.errors import ConfigError
from agent.registry import resolve_module
from agent.testing import module_harness, pipeline_harness, reading

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "modules.md"
EXAMPLES = ROOT / "docs" / "modules" / "examples"
HEAD = 'device_id = "gw"\ndata_dir = "data"\n[[sources]]\nname = "local"\ntype = "mqtt"\n'


def example(name: str) -> str:
    return f"{EXAMPLES / name}.py"


@pytest.mark.parametrize("name", ["lookup", "poller", "splitter", "dewpoint"])
def test_each_example_is_shown_in_the_guide_as_it_is(name: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert (EXAMPLES / f"{name}.py").read_text() in blocks


def test_each_toml_of_the_new_chapters_passes_check(tmp_path: Path) -> None:
    text = GUIDE.read_text()
    chapters = text[text.index("## 7. Doing I/O"):text.index("## Performance notes")]
    blocks = re.findall(r"```toml\n(.*?)```", chapters, flags=re.S)
    assert len(blocks) == 4
    for number, block in enumerate(blocks):
        config = tmp_path / f"agent{number}.toml"
        config.write_text(HEAD + block.replace("docs/modules/examples/", f"{EXAMPLES}/"))
        loaded = load_config(config)
        assert all(plan.spec.isolation == "in-process" for plan in loaded.modules) == (number < 3)


def test_a_typo_in_inputs_is_refused_with_the_nearest_name(tmp_path: Path) -> None:
    text = GUIDE.read_text()
    block = re.findall(r"```toml\n(.*?)```", text[text.index("## 9. Several outputs"):], re.S)[0]
    config = tmp_path / "agent.toml"
    config.write_text(HEAD + block.replace("docs/modules/examples/", f"{EXAMPLES}/")
                      .replace('inputs = ["split"]', 'inputs = ["splt"]'))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    (issue,) = caught.value.issues
    assert issue.path.endswith("inputs[0]") and "did you mean 'split'?" in issue.reason


def test_lookup_awaits_its_blocking_calls() -> None:
    harness = module_harness(resolve_module(f"{example('lookup')}:Lookup"), delay=0.05)
    started = time.monotonic()
    out = harness.run([reading("t1", 1, 20.5), reading("t2", 1, 21.0)])
    assert [r.data["site"] for r in out] == ["site-t1", "site-t2"]
    assert time.monotonic() - started >= 0.1


def test_the_poller_reads_on_its_timer_and_counts_bad_text(tmp_path: Path) -> None:
    value = tmp_path / "temp"
    value.write_text("21.5\n")
    cls = resolve_module(f"{example('poller')}:FilePoller")
    harness = module_harness(cls, path=str(value), every="10s", inputs=(), follow_readings=False)
    assert [r.data for r in harness.advance(20, step=5)] == [{"sensor": "temp", "value": 21.5}] * 2
    value.write_text("n/a")
    assert harness.advance(10) == [] and harness.counters["not_a_number"] == 1


def test_the_splitter_routes_its_alerts_on_their_own_stream(tmp_path: Path) -> None:
    text = GUIDE.read_text()
    block = re.findall(r"```toml\n(.*?)```", text[text.index("## 9. Several outputs"):], re.S)[0]
    config = tmp_path / "agent.toml"
    config.write_text(HEAD + block.replace("docs/modules/examples/", f"{EXAMPLES}/"))
    harness = pipeline_harness(config)
    harness.run([reading("t1", 1, 20.0), reading("t1", 2, 35.0), reading("t1", 3, 31.0)])
    assert [r.data["value"] for r in harness.emitted_by("split.alerts")] == [35.0, 31.0]
    (summary,) = harness.emitted_by("per_minute")
    assert summary.data["count"] == 3


def test_the_dew_point_tutorial_gives_the_dew_point_of_each_room(tmp_path: Path) -> None:
    text = GUIDE.read_text()
    block = re.findall(r"```toml\n(.*?)```", text[text.index("## 12. Named inputs"):], re.S)[0]
    config = tmp_path / "agent.toml"
    config.write_text(HEAD + block.replace("docs/modules/examples/", f"{EXAMPLES}/"))
    harness = pipeline_harness(config)
    harness.run([
        Record("sensors/kitchen/temp", 10.0, {"sensor": "kitchen-temp", "value": 20.0}),
        Record("sensors/hall/hum", 20.0, {"sensor": "hall-hum", "value": 40.0}),
        Record("sensors/kitchen/hum", 30.0, {"sensor": "kitchen-hum", "value": 50.0}),
        Record("sensors/hall/temp", 200.0, {"sensor": "hall-temp", "value": 18.0}),  # too late
    ])
    (dew,) = harness.emitted_by("dew_point")
    assert dew.ts == 30.0 and dew.data == {"sensor": "kitchen", "value": 9.26, "unit": "C"}


def test_a_named_input_that_matches_nothing_is_named_by_its_name(tmp_path: Path) -> None:
    text = GUIDE.read_text()
    block = re.findall(r"```toml\n(.*?)```", text[text.index("## 12. Named inputs"):], re.S)[0]
    config = tmp_path / "agent.toml"
    config.write_text(HEAD.replace("type = \"mqtt\"\n", "type = \"mqtt\"\ntopics = [\"sensors/+/+\"]\n")
                      + block.replace("docs/modules/examples/", f"{EXAMPLES}/")
                      .replace('hum = "sensors/+/hum"', 'hum = "sensor/+/hum"'))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    (issue,) = caught.value.issues
    assert issue.path.endswith("inputs.hum") and "did you mean 'sensors/+/+'?" in issue.reason

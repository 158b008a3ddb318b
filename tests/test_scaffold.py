"""edge-agent modules new: a package that installs, shows in `edge-agent modules`, runs by name,
and whose own test passes. And `edge-agent modules [--json]` still lists what it did."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli.main import main
from agent.cli.scaffold import scaffold
from agent.health.status import read_status
from agent.outbox import Outbox
from tests.conftest import EDGE_AGENT


def test_modules_still_lists_every_module_with_its_schema() -> None:
    result = CliRunner().invoke(main, ["modules", "--json"])
    assert result.exit_code == 0
    listing = {item["name"]: item for item in json.loads(result.output)}
    assert {"window", "deadband", "threshold", "anomaly", "resample", "transform", "onnx"} <= set(
        listing
    )
    assert listing["window"]["target"] == "modules.window:Window"
    assert "every" in listing["window"]["config_schema"]["properties"]
    # a field's docstring in the module's Config is its description, in the schema and the text
    every = listing["window"]["config_schema"]["properties"]["every"]
    assert every["description"] == 'Window length: "10s", "1m", "1h".'
    plain = CliRunner().invoke(main, ["modules"])
    assert plain.exit_code == 0 and "window " in plain.output and "every (default 60.0)" in (
        plain.output
    )
    assert 'every (default 60.0)\n                    Window length: "10s", "1m", "1h".\n' in (
        plain.output
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Peak", "lowercase letters"),
        ("9lives", "starting with a letter"),
        ("my-module", "lowercase letters"),
        ("window", "already registered"),
    ],
)
def test_bad_or_taken_names_are_refused(tmp_path: Path, name: str, message: str) -> None:
    result = CliRunner().invoke(main, ["modules", "new", name, "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not any(tmp_path.iterdir())


def test_an_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    scaffold("peaks", tmp_path)
    result = CliRunner().invoke(main, ["modules", "new", "peaks", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "exists and is not empty" in result.stderr


@pytest.mark.integration
def test_a_new_package_installs_shows_up_runs_by_name_and_its_test_passes(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["modules", "new", "peak_finder", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "edge-agent-peak-finder"
    assert {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} == {
        ".gitignore", "README.md", "pyproject.toml", "edge_agent_peak_finder/__init__.py",
        "tests/test_peak_finder.py",
    }
    site = tmp_path / "site"  # installed beside the test environment, not into it
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(package)],
        capture_output=True, text=True, timeout=300,
    )
    if install.returncode != 0 and "Could not find a version that satisfies" in install.stderr:
        pytest.skip(f"pip could not fetch the build backend (offline?): {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])}

    listed = subprocess.run([*EDGE_AGENT, "modules", "--json"], capture_output=True, text=True,
                            env=env, timeout=60)
    names = {item["name"]: item for item in json.loads(listed.stdout)}
    assert names["peak_finder"]["target"] == "edge_agent_peak_finder:PeakFinder"
    assert "factor" in names["peak_finder"]["config_schema"]["properties"]

    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "gw"\ndata_dir = "data"\n'
        '[[modules]]\nname = "peaks"\nuse = "peak_finder"\ninputs = ["sensors/#"]\n'
        '[modules.with]\nfactor = 3.0\n'
        '[[modules]]\nname = "win"\nuse = "window"\ninputs = ["peaks"]\n'
        '[modules.with]\nevery = "1h"\nstats = ["count", "sum"]\n'
    )
    recording = tmp_path / "r.jsonl"
    recording.write_text("".join(
        json.dumps({"sensor": "t1", "ts": 100 + i, "value": i}) + "\n" for i in range(4)
    ))
    replayed = subprocess.run(
        [*EDGE_AGENT, "replay", "-c", str(config), "--input", str(recording)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr
    out = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [line["data"]["value"] for line in out if line["stream"] == "peaks"] == [0, 3, 6, 9]
    assert [line["data"]["sum"] for line in out if line["stream"] == "win"] == [18.0]

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


@pytest.mark.integration
def test_a_new_source_package_installs_shows_up_runs_by_name_and_its_test_passes(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["modules", "new", "file_value", "--kind", "source", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert 'type = "file_value"' in result.output
    package = tmp_path / "edge-agent-file-value"
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(package)],
        capture_output=True, text=True, timeout=300,
    )
    if install.returncode != 0 and "Could not find a version that satisfies" in install.stderr:
        pytest.skip(f"pip could not fetch the build backend (offline?): {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]), "PYTHONUNBUFFERED": "1"}

    listed = subprocess.run([*EDGE_AGENT, "sources", "--json"], capture_output=True, text=True,
                            env=env, timeout=60)
    names = {item["name"]: item for item in json.loads(listed.stdout)}
    assert names["file_value"]["target"] == "edge_agent_file_value:FileValue"
    assert "path" in names["file_value"]["config_schema"]["properties"]

    value = tmp_path / "value"
    value.write_text("21.5\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "gw"\ndata_dir = "data"\n'
        f'[[sources]]\nname = "fv"\ntype = "file_value"\npath = "{value}"\ninterval = "100ms"\n'
        '[[modules]]\nname = "win"\nuse = "window"\ninputs = ["sensors/#"]\nsync = true\n'
        '[modules.with]\nevery = "1h"\nstats = ["count", "min", "max"]\n'
    )
    agent = subprocess.Popen([*EDGE_AGENT, "run", "-c", str(config)], env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # a loaded machine starts the agent slowly
        while time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.5)
            with contextlib.suppress(Exception):  # no outbox yet, or no health written yet
                if read_status(tmp_path / "data")["sources"]["fv"]["accepted"] >= 5:
                    break
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=15)
    finally:
        agent.kill()
    assert agent.returncode == 0, stderr
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        rows = [record.data for record in box.unsent()]
    finally:
        box.close()
    assert len(rows) == 1 and rows[0]["sensor"] == "file_value" and rows[0]["count"] >= 5
    assert rows[0]["min"] == rows[0]["max"] == 21.5

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout

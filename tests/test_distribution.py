"""The distribution is `tidegate` (the name `edge-agent` on PyPI is an unrelated project): it builds
and installs from a wheel under that name, and nothing in the repository tells anyone to install
`edge-agent` from a package index."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# `pip install edge-agent`, `'edge-agent[cloud]'`, `edge-agent==0.1.0`, `--source edge-agent...`
INDEX_INSTALL = re.compile(
    r"pip3? (install|download)( +-[-\w]+)* +['\"]?edge[-_]agent\b(?![-/._])"  # pip install edge-agent
    r"|['\"]edge[-_]agent(\[|==|>=|~=)"  # a requirement: 'edge-agent[cloud]', "edge-agent>=1"
)


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.splitlines()
            if not name.endswith((".png", ".onnx", ".db")) and (ROOT / name).is_file()]


def test_the_distribution_is_named_tidegate_and_keeps_its_commands():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "tidegate"
    assert set(project["scripts"]) == {"edge-agent", "edge-cloud", "edge-sim"}


def test_nothing_tells_anyone_to_install_edge_agent_from_an_index():
    offenders = []
    for path in _tracked_text_files():
        if path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                      for n, line in enumerate(text.splitlines(), 1) if INDEX_INSTALL.search(line)]
    assert offenders == []


def test_the_pattern_catches_what_it_is_for():
    assert INDEX_INSTALL.search("pip install 'edge-agent[cloud]'")
    assert INDEX_INSTALL.search("sudo scripts/install.sh --source 'edge-agent[fast]==0.1.0'")
    assert INDEX_INSTALL.search("pip install edge-agent")
    assert INDEX_INSTALL.search("pip install -q --upgrade edge_agent")
    assert INDEX_INSTALL.search('dependencies = ["edge-agent>=0.1.0"]')
    assert not INDEX_INSTALL.search("sudo /opt/edge-agent/venv/bin/pip install x.whl")
    assert not INDEX_INSTALL.search("pip install -e '.[test]'   # into the same environment as edge-agent")


@pytest.mark.integration
@pytest.mark.timeout(900)  # a build and a fresh venv's dependencies: minutes on a busy machine
def test_a_built_wheel_installs_in_a_fresh_venv_under_the_new_name():
    result = subprocess.run([str(ROOT / "scripts/check-install.sh")], capture_output=True, text=True,
                            timeout=850)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "install check: tidegate-0.1.0-py3-none-any.whl installs and runs" in result.stdout

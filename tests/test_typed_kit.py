"""The module writer's kit ships its types: ``agent/py.typed`` is in the wheel (PEP 561), so a
module package checked with ``mypy --strict`` gets the agent's annotations, not ``Any``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_the_wheel_carries_py_typed(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: building writes an egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("agent", "modules", "cloud_sync", "simulators"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )
    if built.returncode != 0 and "Could not find a version that satisfies" in built.stderr:
        pytest.skip(f"pip could not fetch the build backend (offline?): {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agent/py.typed" in names
    assert "agent/runtime/context.py" in names and "agent/runtime/stepper.py" in names

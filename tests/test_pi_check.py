"""The Raspberry Pi install under emulation: scripts/pi-check.sh for arm64 and armhf (Debian
bookworm in a chroot through qemu-user-static). Root and minutes to hours (the first build of
each root file system runs debootstrap emulated), so it runs only when asked: ``pytest -m pi``
or ``make pi-check``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.pi, pytest.mark.timeout(4 * 3600)]


@pytest.fixture(autouse=True)
def only_when_asked(request: pytest.FixtureRequest) -> None:
    if "pi" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the emulated Pi check runs with -m pi (or make pi-check)")
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root")


@pytest.mark.parametrize("arch", ["arm64", "armhf"])
def test_install_and_run_on_the_pi(arch: str):
    result = subprocess.run([str(ROOT / "scripts/pi-check.sh"), arch], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "BUILT HERE" not in output  # nothing of the base install compiled on the board
    assert "running with conf.d/edge-agent.conf" in output  # the broker read the installed drop-in
    assert "extras survey:" in output  # every extra resolved (or said why not) for this architecture
    assert f"pi-check: {arch}: ok" in output and "SIGTERM: exit 0" in output

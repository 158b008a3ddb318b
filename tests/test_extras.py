"""Every command that needs an optional extra, run in a venv that has none of them: one line
naming the extra to install, exit status 2, no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.extras import DISTRIBUTION, EXTRAS, MissingExtra, require

ROOT = Path(__file__).resolve().parent.parent

# distributions whose import name is not their own
IMPORT_NAME = {
    "argon2-cffi": "argon2", "psycopg": "psycopg", "protobuf": "google.protobuf", "pyserial": "serial",
    "pyserial-asyncio-fast": "serial_asyncio_fast", "nats-py": "nats",
}


def test_every_extra_of_the_package_is_mapped_to_what_it_provides():
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(optional) - {"test", "dev"}
    for extra, provides in EXTRAS.items():
        dists = [re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0] for req in optional[extra]]
        imports = {IMPORT_NAME.get(d, d.replace("-", "_")) for d in dists}
        assert imports == set(provides), extra


def test_the_message_names_the_extra_and_the_pip_of_this_environment():
    with pytest.raises(MissingExtra) as caught:
        require("zstd", "compression 'zstd'", ("no_such_module_here",))
    assert str(caught.value) == (
        "compression 'zstd' needs the 'zstd' extra (no_such_module_here is not installed): "
        f"{sys.prefix}/bin/pip install '{DISTRIBUTION}[zstd]'"
    )


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the package and its required dependencies only (from the pip cache)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "-e", str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )
    present = subprocess.run(  # agent.extras.is_installed: a dotted name's parent may be absent
        [str(venv / "bin/python"), "-c",
         "from agent.extras import is_installed; print([m for m in "
         + repr(sorted(sum(EXTRAS.values(), ()))) + " if is_installed(m)])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert present == "[]", f"the bare venv has optional packages: {present}"
    return venv


def _config(tmp_path: Path, name: str, extra_toml: str, module: str = "window") -> Path:
    (tmp_path / "model.onnx").write_bytes(b"not read: the extra is checked first")
    (tmp_path / "device.pub").write_text("not read: the extra is checked first\n")
    with_table = 'model = "model.onnx"' if module == "onnx" else 'every = "10s"'
    path = tmp_path / name
    path.write_text(f"""device_id = "gw-1"
data_dir = "data"
[[sources]]
name = "sim"
type = "simulator"
[[modules]]
name = "m"
use = "{module}"
inputs = ["sensors/#"]
[modules.with]
{with_table}
{extra_toml}
""")
    return path


CLOUD = '[cloud]\nurl = "mqtt://127.0.0.1:1"\ncompression = "zstd"\n'
SIGNED = '[remote]\npublic_key_file = "device.pub"\n'


def _cases(tmp_path: Path) -> list[tuple[list[str], str, str]]:
    """(argv after the venv's bin/, the extra, the start of the line)."""
    users = str(tmp_path / "users")
    onnx = _config(tmp_path, "onnx.toml", "", module="onnx")
    zstd = _config(tmp_path, "zstd.toml", CLOUD)
    signed = _config(tmp_path, "signed.toml", SIGNED)
    return [
        (["edge-cloud", "serve", "--broker", "mqtt://127.0.0.1:1"], "cloud", "edge-cloud serve needs"),
        (["edge-cloud", "serve", "--broker", "mqtt://127.0.0.1:1", "--jetstream", "nats://127.0.0.1:1"],
         "nats", "edge-cloud serve: --jetstream needs"),
        (["edge-cloud", "user", "add", "ann", "--users", users, "--password-stdin"], "cloud",
         "edge-cloud user add needs"),
        (["edge-cloud", "user", "list", "--users", users], "cloud", "edge-cloud user list needs"),
        (["edge-cloud", "user", "remove", "ann", "--users", users], "cloud", "edge-cloud user remove needs"),
        (["edge-cloud", "config", "keygen", str(tmp_path / "k"), str(tmp_path / "k.pub")], "signing",
         "edge-cloud config keygen needs"),
        (["edge-cloud", "config", "sign", "--key", str(tmp_path / "k"), "--version", "1", str(signed)],
         "signing", "edge-cloud config sign needs"),
        (["edge-agent", "check", "-c", str(onnx)], "ml",
         f"{onnx}: modules[0](m).with.model: the onnx module needs"),
        (["edge-agent", "run", "-c", str(onnx)], "ml", f"{onnx}: modules[0](m).with.model: the onnx module"),
        (["edge-agent", "check", "-c", str(signed)], "signing",
         f"{signed}: remote.public_key_file: signed configs (Ed25519 keys) needs"),
        (["edge-agent", "check", "-c", str(zstd)], "zstd", f"{zstd}: cloud.compression: compression 'zstd'"),
        (["edge-agent", "run", "-c", str(zstd)], "zstd", f"{zstd}: cloud.compression: compression 'zstd'"),
    ]


@pytest.mark.integration
@pytest.mark.timeout(1200)  # the venv's install, from the pip cache: minutes on a busy machine
def test_each_command_says_which_extra_to_install(bare: Path, tmp_path: Path):
    for argv, extra, start in _cases(tmp_path):
        result = subprocess.run(
            [str(bare / "bin" / argv[0]), *argv[1:]], input="a-long-password\n", cwd=tmp_path,
            capture_output=True, text=True, timeout=60,
        )
        shown = " ".join(argv)
        assert result.returncode == 2, f"{shown}: exit {result.returncode}\n{result.stderr}"
        assert result.stderr.count("\n") == 1, f"{shown}: not one line:\n{result.stderr}"
        assert result.stderr.startswith(start), f"{shown}: {result.stderr}"
        assert result.stderr.endswith(f"{bare}/bin/pip install '{DISTRIBUTION}[{extra}]'\n"), result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "k").exists()

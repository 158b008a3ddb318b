"""Remote configs without a broker: the document format, signatures, and the checks a device
makes before it runs one (every issue at once, the operator's file in charge)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from agent.config import LoadedConfig, load_config
from agent.errors import ConfigError
from agent.remote.rules import LOCAL_ONLY_REASON, validate_remote
from cloud_sync import protocol, signing
from cloud_sync.protocol import DesiredConfig, ProtocolError

LOCAL = """
device_id = "gw-01"
data_dir = "data"

[[sources]]
name = "local"
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
username = "gw-01"
password_env = "LOCAL_PASS"

[[modules]]
name = "win"
use = "window"
inputs = ["sensors/#"]
[modules.with]
every = "10s"

[[modules]]
name = "mine"
use = "mine.py:Mine"
inputs = ["sensors/#"]

[cloud]
url = "mqtts://cloud.example:8883"
password_file = "/etc/edge-agent/cloud.pass"
"""

MINE = """
from agent import Module, ModuleConfig


class Mine(Module):
    class Config(ModuleConfig):
        pass
"""


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoadedConfig:
    monkeypatch.setenv("LOCAL_PASS", "x")
    secret = tmp_path / "cloud.pass"
    secret.write_text("x\n")
    (tmp_path / "mine.py").write_text(MINE)
    path = tmp_path / "agent.toml"
    path.write_text(LOCAL.replace("/etc/edge-agent/cloud.pass", str(secret)))
    return load_config(path)


def doc(config: str, version: int = 2, **fields: object) -> DesiredConfig:
    return DesiredConfig(version, textwrap.dedent(config), **fields)  # type: ignore[arg-type]


def issues(local: LoadedConfig, config: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_remote(doc(config), local)
    return [f"{i.file}: {i.path}: {i.reason}" for i in caught.value.issues]


def remote_body(local: LoadedConfig) -> str:
    """The operator's file without the operator-only keys, as a remote document would carry it."""
    return "\n".join(
        line for line in local.path.read_text().splitlines()
        if not line.startswith(("device_id", "data_dir"))
    )


# -- validation ---------------------------------------------------------------------------------


def test_a_valid_document_keeps_the_operators_keys(local: LoadedConfig) -> None:
    text = remote_body(local).replace('every = "10s"', 'every = "30s"')
    loaded = validate_remote(doc(text), local)
    assert loaded.agent.device_id == "gw-01" and loaded.agent.data_dir == local.agent.data_dir
    assert loaded.path == local.path
    assert loaded.modules[0].config.every == 30.0  # type: ignore[attr-defined]


def test_every_problem_of_both_stages_is_named_with_its_path(local: LoadedConfig) -> None:
    found = issues(local, """
        colour = "blue"
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        [modules.with]
        every = "often"
        [[modules]]
        name = "x"
        use = "no-such-module"
        inputs = ["a/#"]
        [buffer]
        max_bytes = "1GB"
        """)
    assert "config v2: colour: unknown key" in found
    assert any(f.startswith("config v2: modules[0].with.every: 'often' is not a duration") for f in found)
    assert any(f.startswith("config v2: modules[1].use: no module named 'no-such-module'") for f in found)
    assert "config v2: buffer: set by the operator's file only: it cannot change remotely" in found
    assert len(found) == 4, found


@pytest.mark.parametrize(("text", "path"), [
    ('device_id = "gw-02"', "device_id"),
    ('data_dir = "/tmp/elsewhere"', "data_dir"),
    ("[buffer]\nmax_bytes = 1000", "buffer"),
    ('[metrics]\nlisten = "0.0.0.0:9464"', "metrics"),
    ("[remote]\nallow_config = true\ngrace_period = 1", "remote"),
])
def test_the_operators_keys_cannot_change_remotely(local: LoadedConfig, text: str, path: str) -> None:
    assert issues(local, text) == [f"config v2: {path}: {LOCAL_ONLY_REASON}"]


def test_the_operators_keys_may_be_repeated_unchanged(local: LoadedConfig) -> None:
    text = f'device_id = "gw-01"\ndata_dir = "{local.agent.data_dir}"\n'
    assert validate_remote(doc(text), local).agent.device_id == "gw-01"


@pytest.mark.parametrize(("text", "path"), [
    # the cloud's password file, sent to another broker
    ('[cloud]\nurl = "mqtts://evil.example:8883"\npassword_file = "{secret}"', "cloud.password_file"),
    # the local broker's password, sent by a new source to another broker
    ('[[sources]]\nname = "x"\ntype = "mqtt"\nurl = "mqtt://evil.example:1883"\nusername = "gw-01"\n'
     'password_env = "LOCAL_PASS"', "sources[0].password_env"),
    # the right broker and password, a CA of the document's choosing
    ('[cloud]\nurl = "mqtts://cloud.example:8883"\npassword_file = "{secret}"\ntls_ca = "/tmp/mine.pem"',
     "cloud.password_file"),
    # the right broker, another user name
    ('[[sources]]\nname = "x"\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1883"\nusername = "admin"\n'
     'password_env = "LOCAL_PASS"', "sources[0].password_env"),
])
def test_a_credential_stays_with_the_broker_it_was_given_for(
    local: LoadedConfig, text: str, path: str
) -> None:
    secret = local.agent.cloud.password_file if local.agent.cloud else None
    found = issues(local, text.replace("{secret}", str(secret)))
    assert found == [f"config v2: {path}: a remote config may use a credential only with the broker URL, "
                     "username, certificate and CA that the operator's file uses it with"]


def test_the_same_credentials_with_the_same_broker_are_fine(local: LoadedConfig) -> None:
    text = remote_body(local).replace('every = "10s"', 'every = "20s"')
    validate_remote(doc(text), local)


def test_a_module_file_only_where_the_operator_loads_it(local: LoadedConfig, tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text(MINE.replace("Mine", "Other"))
    text = '[[modules]]\nname = "o"\nuse = "other.py:Other"\ninputs = ["a/#"]\n'
    assert issues(local, text) == [
        "config v2: modules[0].use: a remote config names modules by their registered name; "
        "a module file only where the operator's file loads the same one (or, signed, with [remote] "
        "allow_module_files)"
    ]
    validate_remote(doc('[[modules]]\nname = "m2"\nuse = "mine.py:Mine"\ninputs = ["a/#"]\n'), local)


def test_a_source_file_is_never_imported_from_a_remote_config(local: LoadedConfig, tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text("raise SystemExit('imported')\n")
    text = f'[[sources]]\nname = "e"\ntype = "{tmp_path}/evil.py:Evil"\n'
    assert issues(local, text) == [
        "config v2: sources[0].type: a remote config names sources by their registered name; "
        "a source file only where the operator's file loads the same one (or, signed, with [remote] "
        "allow_module_files)"
    ]
    validate_remote(doc('[[sources]]\nname = "s"\ntype = "simulator"\n'), local)


def test_an_exec_source_only_with_a_command_the_operator_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_PASS", "x")
    (tmp_path / "mine.py").write_text(MINE)
    (tmp_path / "cloud.pass").write_text("x\n")
    path = tmp_path / "agent.toml"
    path.write_text(LOCAL.replace("/etc/edge-agent/cloud.pass", str(tmp_path / "cloud.pass"))
                    + '[[sources]]\nname = "cmd"\ntype = "exec"\ncommand = ["/usr/bin/read-sensors"]\n')
    local = load_config(path)
    same = '[[sources]]\nname = "c2"\ntype = "exec"\ncommand = ["/usr/bin/read-sensors"]\n'
    validate_remote(doc(same), local)
    other = same.replace("read-sensors", "curl").replace('"c2"', '"c3"')
    assert issues(local, other) == [
        "config v2: sources[0].command: a remote config may run only a command the operator's file "
        "runs (same command, env and cwd)"
    ]


def test_not_toml_is_one_clear_issue(local: LoadedConfig) -> None:
    [found] = issues(local, "[[modules]\nname = ")
    assert found.startswith("config v2: : not valid TOML:")


def test_the_environment_overrides_a_remote_config_as_it_does_the_file(
    local: LoadedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_AGENT__LOG_LEVEL", "DEBUG")
    assert validate_remote(doc('log_level = "ERROR"'), local).agent.log_level == "DEBUG"


# -- the document -------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "reason", "detail"), [
    (b"not json", "bad_json", "the desired config is not JSON"),
    (b"[1, 2]", "bad_body", "not a JSON object"),
    (b'{"version": 0, "config": ""}', "bad_body", "version: not a positive integer"),
    (b'{"version": "3", "config": ""}', "bad_body", "version: not a positive integer"),
    (b'{"version": 3}', "bad_body", "config: not TOML text"),
    (b'{"version": 3, "config": "", "colour": 1}', "bad_body", "colour: unknown field"),
    (b'{"v": 2, "version": 3, "config": ""}', "bad_version", "v: format 2"),
    (b'{"version": 3, "config": "", "device": "a/b"}', "bad_body", "device: not a device id"),
    (b'{"version": 3, "config": "", "issued_at": 1.5}', "bad_body", "issued_at: not whole Unix seconds"),
    (b'{"version": 3, "config": "", "signature": 5}', "bad_body", "signature: not a base64 string"),
    (b'{"version": 3, "config": "' + b"x" * protocol.MAX_DESIRED + b'"}', "too_large", "at most"),
])
def test_a_bad_document_says_what_is_wrong_and_where(payload: bytes, reason: str, detail: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_desired(payload)
    assert caught.value.reason == reason and detail in caught.value.detail


def test_a_document_round_trips_and_its_digest_ignores_the_signature() -> None:
    original = DesiredConfig(7, 'log_level = "INFO"\n', "gw-01", 1700000000, "ops@example", "c2ln")
    decoded = protocol.decode_desired(original.encode())
    assert decoded == original
    unsigned = DesiredConfig(7, 'log_level = "INFO"\n', "gw-01", 1700000000, "ops@example")
    assert unsigned.digest() == decoded.digest()
    assert json.loads(protocol.canonical_json({"b": "é", "a": 1})) == {"a": 1, "b": "é"}
    assert protocol.canonical_json({"b": "é", "a": 1}) == '{"a":1,"b":"é"}'.encode()


def test_signatures_verify_and_every_forgery_is_refused() -> None:
    private_pem, public_pem = signing.generate()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    key = load_pem_private_key(private_pem, None)
    public = load_pem_public_key(public_pem)
    other = load_pem_public_key(signing.generate()[1])
    signed = signing.sign(DesiredConfig(3, "x = 1\n", "gw-01"), key)  # type: ignore[arg-type]
    signing.verify(protocol.decode_desired(signed.encode()), public)  # type: ignore[arg-type]
    forgeries = {
        "unsigned": DesiredConfig(3, "x = 1\n", "gw-01"),
        "bad signature": DesiredConfig(4, "x = 1\n", "gw-01", signature=signed.signature),  # replayed
        "bad signature ": DesiredConfig(3, "x = 2\n", "gw-01", signature=signed.signature),  # tampered
        "signature: not base64": DesiredConfig(3, "x = 1\n", "gw-01", signature="%%%"),
    }
    for expected, forged in forgeries.items():
        with pytest.raises(signing.SignatureError) as caught:
            signing.verify(forged, public)  # type: ignore[arg-type]
        assert caught.value.reason.startswith(expected.strip())
    with pytest.raises(signing.SignatureError):
        signing.verify(signed, other)  # type: ignore[arg-type]  # another key


def test_a_public_key_file_is_checked_with_the_config(tmp_path: Path) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    path = tmp_path / "agent.toml"
    path.write_text(f'device_id = "a"\ndata_dir = "d"\n[remote]\npublic_key_file = "{bad}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [issue] = caught.value.issues
    assert str(issue) == f"{path}: remote.public_key_file: {bad}: not a PEM public key"


# -- commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "payload", "detail"), [
    ("Ping", b'{"id": "1"}', "not a command name"),
    ("ping", b"{", "the command is not JSON"),
    ("ping", b'{"args": {}}', "id: 1 to 64"),
    ("ping", b'{"id": "a b"}', "id: 1 to 64"),
    ("ping", b'{"id": "1", "args": []}', "args: not an object"),
    ("ping", b'{"id": "1", "expires_at": "soon"}', "expires_at: not Unix seconds"),
    ("ping", b'{"id": "1", "run": "rm -rf /"}', "run: unknown field"),
])
def test_a_bad_command_says_what_is_wrong(name: str, payload: bytes, detail: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_command(name, payload)
    assert detail in caught.value.detail


def test_reply_topics_stay_under_the_device() -> None:
    assert protocol.is_reply_topic("edge", "gw-1", "edge/gw-1/reply")
    assert protocol.is_reply_topic("edge", "gw-1", "edge/gw-1/reply/console-1")
    for topic in ("edge/gw-2/reply", "edge/gw-1/replyx", "edge/gw-1/cmd/ping", "edge/gw-1/reply/#", "x"):
        assert not protocol.is_reply_topic("edge", "gw-1", topic), topic


def test_edge_cloud_config_keygen_and_sign(tmp_path: Path) -> None:
    import subprocess
    import sys

    cli = [sys.executable, "-m", "cloud_sync", "config"]
    private, public = tmp_path / "signer.pem", tmp_path / "signer.pub"
    subprocess.run([*cli, "keygen", str(private), str(public)], check=True, capture_output=True)
    assert private.stat().st_mode & 0o777 == 0o600
    again = subprocess.run([*cli, "keygen", str(private), str(public)], capture_output=True, text=True)
    assert again.returncode != 0 and "exists: not overwriting a key" in again.stderr
    (tmp_path / "c.toml").write_text('log_level = "DEBUG"\n')
    out = subprocess.run([*cli, "sign", "--key", str(private), "--version", "4", "--device", "gw-01",
                          str(tmp_path / "c.toml")], check=True, capture_output=True).stdout
    doc = protocol.decode_desired(out.strip())
    assert (doc.version, doc.device, doc.config) == (4, "gw-01", 'log_level = "DEBUG"\n')
    signing.verify(doc, signing.load_public_key(public))


@pytest.mark.parametrize(("use", "parsed"), [
    ("x.py:C", ("x.py", "C")),
    ("/a/b/x.py:C", ("/a/b/x.py", "C")),
    ("x.py:/../payload.pyc:Evil", None),   # the file part is "x.py:/../payload.pyc": not Python
    ("x.py:C:D", None),                   # the file part is "x.py:C"
    ("x.py:", None),
    ("window", None),
    ("x.py:not a class", None),
])
def test_the_file_module_syntax_is_read_one_way(use: str, parsed: tuple[str, str] | None) -> None:
    from agent.registry import parse_file_use

    assert parse_file_use(use) == parsed


def test_a_pyc_behind_a_py_prefix_is_never_loaded(tmp_path: Path) -> None:
    from agent.errors import ModuleLoadError
    from agent.registry import resolve_module

    (tmp_path / "x.py:").mkdir()
    (tmp_path / "payload.pyc").write_bytes(b"not python")
    with pytest.raises(ModuleLoadError, match=r"path/to/file\.py:ClassName"):
        resolve_module(f"{tmp_path}/x.py:/../payload.pyc:Evil")


def test_allow_module_files_needs_a_public_key(tmp_path: Path) -> None:
    from agent.config import RemoteSettings

    with pytest.raises(ValueError, match="allow_module_files needs public_key_file"):
        RemoteSettings(allow_config=True, allow_module_files=True)


def test_a_credential_is_not_sent_without_the_tls_it_was_given_with(
    local: LoadedConfig, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    text = LOCAL.replace('password_env = "LOCAL_PASS"', f'password_env = "LOCAL_PASS"\ntls_ca = "{ca}"')
    text = text.replace("/etc/edge-agent/cloud.pass", str(tmp_path / "cloud.pass"))
    (tmp_path / "agent.toml").write_text(text)
    with_tls = load_config(tmp_path / "agent.toml")
    plain = ('[[sources]]\nname = "local"\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1883"\n'
             'username = "gw-01"\npassword_env = "LOCAL_PASS"\n')
    assert issues(with_tls, plain) == [
        "config v2: sources[0].password_env: a remote config may use a credential only with the broker URL, "
        "username, certificate and CA that the operator's file uses it with"]


def test_no_two_connections_share_a_client_id(local: LoadedConfig) -> None:
    text = ('[[sources]]\nname = "x"\ntype = "mqtt"\nclient_id = "gw-01"\n'
            '[cloud]\nurl = "mqtts://cloud.example:8883"\n')
    assert issues(local, text) == [
        "config v2: sources[0].client_id: client id 'gw-01' is the [cloud] uploader's too"]


def test_a_document_without_cloud_keeps_the_operators(local: LoadedConfig) -> None:
    assert validate_remote(doc(""), local).agent.cloud == local.agent.cloud

"""Config: units, two-stage validation with every error at once, overrides, secrets, samples."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent
VALID = """
device_id = "gw-01"
data_dir = "data"

[[sources]]
name = "local"
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["sensors/#"]

[[modules]]
name = "climate_1m"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "60s"
stats = ["count", "mean", "min", "max"]

[buffer]
max_bytes = "500MB"

[cloud]
url = "mqtt://broker.example.com:1883"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("60s", 60), ("5m", 300), ("1h", 3600), ("1d", 86400), (7, 7), (0.25, 0.25),
     ("1.5s", 1.5), ("30", 30)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1s", "1s2", True, None, [1]])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MB", 500_000_000), ("1GiB", 2**30), ("64kB", 64_000), ("10 KiB", 10240), (1024, 1024),
     ("100", 100), ("1.5MB", 1_500_000)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_the_issue_example_is_valid_and_relative_data_dir_is_beside_the_file(tmp_path):
    loaded = load_config(write(tmp_path, VALID))
    assert loaded.agent.device_id == "gw-01"
    assert loaded.agent.data_dir == tmp_path / "data"
    assert loaded.agent.buffer.max_bytes == 500_000_000
    (plan,) = loaded.modules
    assert plan.spec.name == "climate_1m" and plan.config.every == 60.0  # type: ignore[attr-defined]


def test_every_error_of_both_stages_is_reported_at_once(tmp_path):
    path = write(tmp_path, """
        device_id = "gw 01"
        data_dir = "/tmp/x"
        colour = "blue"
        [[sources]]
        name = "local"
        type = "mqtt"
        url = "http://x"
        topics = ["sensors/#/x"]
        [[modules]]
        name = "w"
        use = "window"
        inputs = ["sensors/#"]
        [modules.with]
        every = "soon"
        wat = 1
        [[modules]]
        name = "x"
        use = "nope"
        inputs = ["a"]
        [buffer]
        max_bytes = "lots"
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = {issue.path: issue.reason for issue in caught.value.issues}
    assert set(found) == {
        "device_id", "colour", "sources[0].url", "sources[0].topics[0]", "buffer.max_bytes",
        "modules[0].with.every", "modules[0].with.wat", "modules[1].use",
    }
    assert found["colour"] == "unknown key"
    assert "no module named 'nope'" in found["modules[1].use"]
    assert all(str(issue).startswith(f"{path}: ") for issue in caught.value.issues)


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("device_id = 'a'\n", "data_dir", "required"),
        ("not toml [", "", "not valid TOML"),
        (VALID.replace('"60s"', "0"), "modules[0].with.every", "greater than 0"),
        (VALID + "\n[[sources]]\nname = 'local'\ntype = 'simulator'\n", "sources[1].name", "used twice"),
        (VALID.replace('type = "mqtt"', 'type = "pigeon"'), "sources[0].type", "no source named 'pigeon'"),
    ],
)
def test_single_errors_name_their_place(tmp_path, text, path, reason):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert any(issue.path == path and reason in issue.reason for issue in caught.value.issues), (
        caught.value.issues
    )


def test_environment_overrides_nested_keys_and_list_items(tmp_path):
    env = {
        "EDGE_AGENT__DEVICE_ID": "gw-02",
        "EDGE_AGENT__BUFFER__MAX_BYTES": '"1GiB"',
        "EDGE_AGENT__SOURCES__0__URL": "mqtt://10.0.0.5:1884",
        "EDGE_AGENT__MODULES__0__SYNC": "false",
        "UNRELATED": "x",
    }
    loaded = load_config(write(tmp_path, VALID), environ=env)
    assert loaded.agent.device_id == "gw-02"
    assert loaded.agent.buffer.max_bytes == 2**30
    assert loaded.agent.sources[0].url == "mqtt://10.0.0.5:1884"
    assert loaded.agent.modules[0].sync is False


def test_secrets_come_from_the_environment_or_a_file_and_are_never_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUD_PASSWORD", "canary-s3cret")
    text = VALID.replace(
        'url = "mqtt://broker.example.com:1883"',
        'url = "mqtt://broker.example.com:1883"\nusername = "gw"\npassword_env = "CLOUD_PASSWORD"',
    )
    loaded = load_config(write(tmp_path, text))
    assert loaded.agent.cloud is not None
    password = loaded.agent.cloud.password()
    assert password is not None and password.get_secret_value() == "canary-s3cret"
    assert "canary-s3cret" not in repr(loaded.agent) and "canary-s3cret" not in str(password)

    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    text = VALID.replace(
        'url = "mqtt://broker.example.com:1883"',
        f'url = "mqtt://broker.example.com:1883"\npassword_file = "{secret_file}"',
    )
    cloud = load_config(write(tmp_path, text)).agent.cloud
    assert cloud is not None and cloud.password().get_secret_value() == "from-a-file"  # type: ignore[union-attr]


def test_a_missing_secret_and_a_password_in_the_url_are_errors(tmp_path):
    text = VALID.replace('url = "mqtt://broker.example.com:1883"', 'url = "mqtt://u:pw@h:1883"')
    with pytest.raises(ConfigError, match="no password in the URL"):
        load_config(write(tmp_path, text))
    text = VALID.replace(
        'url = "mqtt://broker.example.com:1883"',
        'url = "mqtt://h:1883"\npassword_env = "EDGE_TEST_UNSET_VARIABLE"',
    )
    with pytest.raises(ConfigError, match="EDGE_TEST_UNSET_VARIABLE is not set"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("**/*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_check(path):
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_exits_2_and_prints_file_key_reason(tmp_path):
    path = write(tmp_path, VALID.replace('every = "60s"', 'every = "often"'))
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: modules[0](climate_1m).with.every: 'often' is not a duration")


def test_a_module_file_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "double.py").write_text(
        "from agent import Module\n"
        "class Double(Module):\n"
        "    description = 'doubles'\n"
        "    def process(self, record):\n"
        "        self.context.emit({'v': 2 * record.data['value']})\n"
    )
    text = VALID.replace('use = "window"', 'use = "plugins/double.py:Double"').replace(
        '[modules.with]\nevery = "60s"\nstats = ["count", "mean", "min", "max"]\n', ""
    )
    monkeypatch.chdir("/")
    (plan,) = load_config(write(tmp_path, text)).modules
    assert plan.cls.__name__ == "Double"
    missing = text.replace("plugins/double.py", "plugins/absent.py")
    with pytest.raises(ConfigError, match=r"modules\[0\]\(climate_1m\)\.use: file .*absent\.py not found"):
        load_config(write(tmp_path, missing))


def test_every_error_of_every_kind_at_once_each_naming_its_entry(tmp_path):
    """A duplicate name beside field errors, a string where a boolean goes, unknown keys with the
    nearest known one: all in one run, each printed with the module's or source's name."""
    path = write(tmp_path, VALID.replace('topics = ["sensors/#"]', 'topicz = ["sensors/#"]')
                 .replace("sync = true", 'sync = "yes"').replace('every = "60s"', 'evry = "60s"')
                 + '\n[[modules]]\nname = "climate_1m"\nuse = "window"\ninputs = ["a"]\n'
                 + '[modules.with]\nevery = "often"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    printed = str(caught.value).splitlines()
    assert sorted(line.removeprefix(f"{path}: ") for line in printed) == [
        "modules[0](climate_1m).sync: use true or false (a TOML boolean), not 'yes'",
        "modules[0](climate_1m).with.evry: unknown key; did you mean 'every'?",
        "modules[1](climate_1m).name: name 'climate_1m' is used twice (first by modules[0])",
        "modules[1](climate_1m).with.every: 'often' is not a duration: use '500ms', '60s', '5m', '1h', "
        "'1d' or a number of seconds",
        "sources[0](local).topicz: unknown key; did you mean 'topics'?",
    ]
    # scripts and the console read the key path itself, without the name
    assert {issue.path for issue in caught.value.issues} >= {"modules[0].sync", "sources[0].topicz"}


@pytest.mark.parametrize("value", ['"yes"', '"true"', "1", '"on"'])
def test_booleans_are_booleans(tmp_path, value):
    with pytest.raises(ConfigError, match=r"sync: use true or false"):
        load_config(write(tmp_path, VALID.replace("sync = true", f"sync = {value}")))


def test_a_far_fetched_key_gets_no_suggestion(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, VALID + '\ncolour = "red"\n'))
    assert [issue.reason for issue in caught.value.issues] == ["unknown key"]


@pytest.mark.parametrize(("host", "placeholder"), [
    ("broker.example.com", True), ("example.org", True), ("gw.test", True), ("mqtt.example", True),
    ("myexample.com", False), ("broker.example.company", False), ("10.0.0.5", False),
])
def test_check_deployable_refuses_only_reserved_example_names(tmp_path, host, placeholder):
    path = write(tmp_path, VALID.replace("broker.example.com", host))
    result = subprocess.run([sys.executable, "-m", "agent", "check", "--deployable", "-c", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == (2 if placeholder else 0), result.stderr
    if placeholder:
        assert f"cloud.url: {host} is a placeholder" in result.stderr


def test_isolation_and_max_rss(tmp_path):
    loaded = load_config(write(tmp_path, VALID.replace(
        "sync = true", 'sync = true\nisolation = "process"\nmax_rss = "200MB"')))
    spec = loaded.modules[0].spec
    assert (spec.isolation, spec.max_rss) == ("process", 200_000_000)
    assert load_config(write(tmp_path, VALID)).modules[0].spec.isolation == "in-process"
    with pytest.raises(ConfigError, match=r'max_rss applies to isolation = "process" only'):
        load_config(write(tmp_path, VALID.replace("sync = true", 'sync = true\nmax_rss = "200MB"')))
    with pytest.raises(ConfigError, match=r"isolation"):
        load_config(write(tmp_path, VALID.replace("sync = true", 'sync = true\nisolation = "thread"')))


def test_a_missing_extra_is_reported_beside_every_other_error(tmp_path, monkeypatch):
    """A missing optional package is one more error of the same run, not one found after the
    others are fixed (here zstandard, as if not installed)."""
    monkeypatch.setitem(sys.modules, "zstandard", None)
    path = write(tmp_path, VALID.replace('url = "mqtt://broker.example.com:1883"',
                                         'url = "mqtt://broker.example.com:1883"\ncompression = "zstd"')
                 .replace("sync = true", 'sync = "yes"')
                 + '\n[[modules]]\nname = "climate_1m"\nuse = "window"\ninputs = ["a"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    reasons = {issue.path: issue.reason for issue in caught.value.issues}
    assert set(reasons) == {"cloud.compression", "modules[0].sync", "modules[1].name"}, reasons
    assert "needs the 'zstd' extra" in reasons["cloud.compression"]

"""Property-based remote configs against one agent process on a real Mosquitto: whatever a
document holds (modules by name or by file in every spelling, hostile `with` tables, unknown
keys, sections of the wrong type, secrets and TLS settings moved about), no file it names is
imported, the agent never stops, and each document ends applied, rejected or rolled back,
reported once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_sync.protocol import DesiredConfig
from tests.conftest import AgentProcess, Broker
from tests.remote_helpers import CloudClient, body, remote_config

pytestmark = pytest.mark.integration
DEVICE = "test-gw"
FINAL = ("applied", "rejected", "rolled_back")

EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("ran")
raise SystemExit(9)
'''


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value) if value == value and abs(value) != float("inf") else "nan"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


SCALAR = st.one_of(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), st.floats(allow_nan=False),
                   st.text(max_size=30), st.booleans())
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)),
    max_leaves=12)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("remote-props")
    broker = Broker(workdir).start()
    marker = workdir / "imported"
    (workdir / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = remote_config(workdir, broker.url, remote='allow_config = true\ngrace_period = "300ms"')
    agent = AgentProcess(config).start()
    agent.wait_for_log("remote control: subscribed")
    cloud = CloudClient(broker.port)
    cloud.subscribe(f"edge/{DEVICE}/config/reported")
    try:
        yield {"workdir": workdir, "marker": marker, "config": config, "agent": agent, "cloud": cloud,
               "version": [0], "base": body(config)}
    finally:
        cloud.close()
        agent.stop()
        broker.stop()


@st.composite
def document(draw: st.DrawFn, workdir: Path) -> str:
    evil = str(workdir / "evil.py")
    uses = st.one_of(
        st.sampled_from(["window", "deadband", "transform", "crashy.py:Crashy", "evil.py:Evil",
                         f"{evil}:Evil", f"{evil}:/../x.pyc:Evil", "../evil.py:Evil", f"{evil}", "evil",
                         "agent/__main__.py:X", "window:Window", "modules.window:Window"]),
        st.text(min_size=1, max_size=30))
    parts = []
    for index in range(draw(st.integers(min_value=0, max_value=3))):
        table = draw(st.dictionaries(st.sampled_from(["every", "stats", "where", "absolute", "x", "crash"]),
                                     VALUE, max_size=3))
        inputs = draw(st.sampled_from([["sensors/#"], ["#"], ["a/+/b"], ["bad/#/x"]]))
        parts.append(f'[[modules]]\nname = "m{index}"\nuse = {toml_value(draw(uses))}\n'
                     f"inputs = {toml_value(inputs)}\nwith = {toml_value(table)}\n")
    extra = draw(st.sampled_from(["", 'colour = 1\n', 'log_level = "DEBUG"\n', "[buffer]\nmax_bytes = 1\n",
                                  "[metrics]\nlisten = \"0.0.0.0:1\"\n", "device_id = \"other\"\n",
                                  "[[sources]]\nname = \"s\"\ntype = \"mqtt\"\nclient_id = \"test-gw\"\n"]))
    return extra + "\n".join(parts)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.data())
def test_remote_configs_never_run_code_never_stop_the_agent_and_end_once(
    setup: dict[str, Any], data: st.DataObject
) -> None:
    cloud: CloudClient = setup["cloud"]
    agent: AgentProcess = setup["agent"]
    setup["version"][0] += 1
    version = setup["version"][0]
    text = data.draw(document(setup["workdir"]))
    if data.draw(st.booleans()):
        text = setup["base"] + "\n" + text  # the running config, with things added
    cloud.desired(DEVICE, DesiredConfig(version, text))
    final = None
    deadline = time.monotonic() + 20
    while final is None and time.monotonic() < deadline:
        final = next((r for r in cloud.reports(DEVICE)
                      if r["version"] == version and r["result"] in FINAL), None)
        time.sleep(0.05)
    assert final is not None, f"v{version}: no final report\n{text}\n{agent.output()[-2000:]}"
    time.sleep(0.1)
    ends = [r["result"] for r in cloud.reports(DEVICE) if r["version"] == version and r["result"] in FINAL]
    assert len(ends) == 1, (ends, text)
    assert not setup["marker"].exists(), text
    assert agent.process is not None and agent.process.poll() is None, agent.output()[-3000:]

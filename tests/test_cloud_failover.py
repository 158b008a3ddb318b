"""``[cloud] url`` as a list of broker nodes: the config, and the uploader moving past a dead one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import CloudConfig
from tests.conftest import EDGE_AGENT, Broker, IngestProcess, agent_config, free_port
from tests.sync_helpers import cloud_section

A, B, C = "mqtt://10.0.0.1:1883", "mqtt://10.0.0.2:1883", "mqtt://10.0.0.3:1884"


def test_a_single_url_is_one_node() -> None:
    config = CloudConfig(url=A)
    assert config.urls == (A,) and config.node(5) is config and config.port == 1883


def test_a_list_names_the_nodes_in_order_and_node_cycles() -> None:
    config = CloudConfig(url=[A, B, C])
    assert config.urls == (A, B, C)
    assert [config.node(i).url for i in range(4)] == [A, B, C, A]
    assert config.node(2).port == 1884 and config.node(2).urls == (C,)


@pytest.mark.parametrize(("url", "says"), [
    ([], "at least 1"),
    ([A, "mqtts://10.0.0.2:8883"], "same scheme"),
    ([A, "http://10.0.0.2"], "mqtt"),
])
def test_bad_lists_are_refused_by_name(url: list[str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        CloudConfig(url=url)


@pytest.mark.integration
def test_sync_skips_a_dead_node_and_drains_through_the_next(
    tmp_path: Path, cloud_broker: Broker, ingests: list[IngestProcess],
) -> None:
    from agent.outbox import Changes, Outbox

    ingests.append(IngestProcess(tmp_path, cloud_broker.url, f"sqlite:///{tmp_path}/cloud.db").start())
    dead = f"mqtt://127.0.0.1:{free_port()}"
    config = agent_config(tmp_path, extra=cloud_section([dead, cloud_broker.url]))
    box = Outbox.open(tmp_path / "data")
    box.commit(Changes(records=[("win", float(i), {"count": 1}) for i in range(50)]))
    box.close()
    result = subprocess.run([*EDGE_AGENT, "sync", "-c", str(config), "--once", "--timeout", "20"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "up to seq 50" in result.stdout
    assert f"reconnecting to {cloud_broker.url}" in result.stderr

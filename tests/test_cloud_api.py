"""The JSON API: bearer tokens, the two contract routes, and clear errors on bad parameters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agent.codec import dumps
from cloud_sync.protocol import DataBatch, Record
from cloud_sync.server.ledger import Status
from cloud_sync.server.store import open_store
from cloud_sync.server.web import create_app, load_tokens

TOKEN = {"Authorization": "Bearer t0ken"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = open_store(f"sqlite:///{tmp_path}/cloud.db")
    records = [Record(s, "win" if s % 2 else "alerts", 100.0 + s, dumps({"count": s})) for s in range(1, 21)]
    store.write(
        [
            ("edge/gw-1/data", DataBatch("gw-1", "e", 0, records)),
            (
                "edge/gw-1/status",
                Status(
                    "gw-1",
                    {
                        "online": True,
                        "version": "0.1.0",
                        "send_rate": 12.5,
                        "backlog": {"rows": 7, "bytes": 900, "oldest_unsent_age_s": 30.0},
                        "dropped": {"buffer_full": 2},
                        "clock": {"time": 1000.5, "synced": True},
                    },
                    1000.0,
                ),
            ),
        ],
        now=1000.0,
    )
    with TestClient(create_app(store, ["other", "t0ken"])) as test_client:
        yield test_client
    store.close()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic t0ken"}, {"Authorization": "Bearer"}],
)
def test_every_api_route_needs_a_token(client: TestClient, headers: dict[str, str]) -> None:
    for path in ("/api/devices", "/api/devices/gw-1/records", "/api/devices/gw-1", "/api/stats"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200


def test_no_configured_token_means_no_access(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/empty.db")
    with TestClient(create_app(store, [])) as test_client:
        assert test_client.get("/api/devices", headers={"Authorization": "Bearer "}).status_code == 401
    store.close()


def test_devices_show_the_sync_figures(client: TestClient) -> None:
    [device] = client.get("/api/devices", headers=TOKEN).json()
    assert device["device_id"] == "gw-1" and device["online"] is True
    assert device["records"] == 20 and device["acked_seq"] == 20 and device["gaps"] == 0
    assert device["backlog"] == 7 and device["backlog_bytes"] == 900
    assert device["oldest_unsent_age_s"] >= 30.0  # aged since the status came
    assert device["dropped"] == {"buffer_full": 2} and device["last_sync"] == 1000.0
    assert device["last_seen"] == 1000.0 and device["clock_skew_s"] == 0.5
    assert client.get("/api/devices/gw-1", headers=TOKEN).json()["version"] == "0.1.0"


@pytest.mark.parametrize(
    ("query", "seqs"),
    [
        ("", list(range(1, 21))),
        ("?limit=3", [1, 2, 3]),
        ("?after_seq=17", [18, 19, 20]),
        ("?stream=win&after_seq=10&limit=2", [11, 13]),
        ("?stream=alerts", list(range(2, 21, 2))),
        ("?stream=none", []),
    ],
)
def test_records_in_seq_order_with_filters(client: TestClient, query: str, seqs: list[int]) -> None:
    rows = client.get(f"/api/devices/gw-1/records{query}", headers=TOKEN).json()
    assert [r["seq"] for r in rows] == seqs
    assert all(set(r) == {"seq", "stream", "ts", "data"} for r in rows)


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/api/devices/gw-1/records?limit=0", 400, "limit"),
        ("/api/devices/gw-1/records?limit=100001", 400, "limit"),
        ("/api/devices/gw-1/records?after_seq=x", 400, "after_seq"),
        ("/api/devices/gw-1/records?after_seq=-1", 400, "after_seq"),
        ("/api/devices/bad%20id/records", 400, "device_id"),
        ("/api/devices/nobody", 404, "nobody"),
    ],
)
def test_bad_parameters_get_a_clear_error(client: TestClient, path: str, status: int, says: str) -> None:
    response = client.get(path, headers=TOKEN)
    assert response.status_code == status and says in response.json()["error"]


def test_tokens_come_from_the_environment_and_a_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops team\nfile-token\n\n")
    assert load_tokens(tokens, {"EDGE_CLOUD_TOKEN": "a, b,"}) == ["a", "b", "file-token"]
    with pytest.raises(ValueError, match="cannot read"):
        load_tokens(tmp_path / "missing", {})

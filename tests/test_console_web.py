"""The console over HTTP, in process: sign-in and sessions, CSRF, headers, the pages and the
console's JSON routes, and device-supplied strings escaped in the HTML."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from agent.codec import dumps
from cloud_sync.protocol import DataBatch, Record
from cloud_sync.server.console import Console, ConsoleSettings
from cloud_sync.server.console.signin import safe_next
from cloud_sync.server.console.users import write_users
from cloud_sync.server.ledger import Status
from cloud_sync.server.store import Store, open_store
from cloud_sync.server.web import create_app

PASSWORD = "correct horse battery"
BASE = "http://127.0.0.1:8080"
HOSTILE = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>']
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
"""Argon2id with small costs, so that signing in a hundred times stays quick in tests (a hash
carries its own costs; the console verifies whatever the file holds)."""


def hash_password(name: str, password: str) -> str:
    return CHEAP.hash(password)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    write_users(path, {"alice": hash_password("alice", PASSWORD), "bob": hash_password("bob", PASSWORD)})
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/cloud.db")
    now = time.time()
    summaries = [Record(s, "win", now - 60 + s, dumps({"sensor": "t1", "start": now - 61 + s,
                                                        "end": now - 60 + s, "count": 10, "mean": 20.0 + s}))
                 for s in range(1, 11)]
    events = [Record(11, HOSTILE[0], now, dumps({"event": "raised", "sensor": HOSTILE[1], "severity": "high",
                                                   "rule": "hot", "value": 99.5, HOSTILE[1]: HOSTILE[0]}))]
    opened.write([
        ("edge/gw-1/data", DataBatch("gw-1", "e", 0, summaries + events)),
        ("edge/gw-1/status", Status("gw-1", {
            "online": True, "version": HOSTILE[0], "last_error": HOSTILE[1], "config_version": HOSTILE[1],
            "errors": {HOSTILE[0]: 2}, "dropped": {HOSTILE[1]: 3},
            "backlog": {"rows": 4, "bytes": 400, "oldest_unsent_age_s": 12.0},
            "clock": {"time": now - 0.03, "synced": True},  # a hair behind: no "-0.0 s" on the page
        }, now)),
        ("edge/gw-2/status", Status("gw-2", {"online": False}, now)),
    ], now=now)
    yield opened
    opened.close()


def make_client(store: Store, users: Path | None, base: str = BASE, **settings: object) -> TestClient:
    console = Console(store, ConsoleSettings(users_file=users, **settings))  # type: ignore[arg-type]
    return TestClient(create_app(store, ["t0ken"], None, console), base_url=base, follow_redirects=False)


@pytest.fixture
def client(store: Store, users: Path) -> TestClient:
    return make_client(store, users)


def sign_in(client: TestClient, name: str = "alice", password: str = PASSWORD, origin: str = BASE,
            next_url: str = "/fleet") -> object:
    page = client.get("/signin")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    return client.post("/signin", data={"csrf": token.group(1), "name": name, "password": password,
                                        "next": next_url}, headers={"Origin": origin})


def csrf_of(client: TestClient) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/fleet").text)
    assert found is not None
    return found.group(1)


# -- without a session ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/fleet", "/fleet?show=offline", "/devices/gw-1"])
def test_pages_redirect_to_sign_in(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 303 and response.headers["location"].startswith("/signin?next=")


def test_an_htmx_request_without_a_session_is_told_where_to_sign_in(client: TestClient) -> None:
    response = client.get("/fleet", headers={"HX-Request": "true"})
    assert response.status_code == 401 and response.headers["hx-redirect"].startswith("/signin?next=")


@pytest.mark.parametrize(
    "path",
    ["/api/devices", "/api/devices/gw-1", "/api/fleet", "/api/events", "/api/devices/gw-1/history",
     "/api/devices/gw-1/streams", "/api/devices/gw-1/latest?stream=win", "/api/devices/gw-1/dropped"],
)
def test_api_routes_need_a_session_or_a_token(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    if path != "/api/events":  # a stream: read below
        assert client.get(path, headers={"Authorization": "Bearer t0ken"}).status_code == 200


# -- signing in -------------------------------------------------------------------------------------


def test_sign_in_sets_a_hardened_cookie_and_goes_on(client: TestClient) -> None:
    response = sign_in(client, next_url="/devices/gw-1")
    assert response.status_code == 303 and response.headers["location"] == "/devices/gw-1"
    cookie = response.headers["set-cookie"]
    assert "edge_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http on 127.0.0.1 only: the browser would drop it
    assert client.get("/fleet").status_code == 200
    assert client.get("/api/devices").status_code == 200  # the API takes the session too


def test_over_https_cookies_are_secure_and_host_only(store: Store, users: Path) -> None:
    client = make_client(store, users, base="https://console.example", allowed_hosts=("console.example",))
    response = sign_in(client, origin="https://console.example")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-edge_session=") and "Secure" in cookie and "HttpOnly" in cookie
    assert client.get("/fleet").headers["strict-transport-security"].startswith("max-age=")


def test_no_password_crosses_a_network_in_clear(store: Store, users: Path) -> None:
    client = make_client(store, users, base="http://10.1.2.3:8080")
    response = sign_in(client, origin="http://10.1.2.3:8080")
    assert response.status_code == 400 and "HTTPS" in response.text
    assert "set-cookie" not in response.headers or "edge_session" not in response.headers["set-cookie"]


@pytest.mark.parametrize(
    ("name", "password", "origin", "status"),
    [
        ("alice", "wrong password", BASE, 401),
        ("nobody", PASSWORD, BASE, 401),
        ("alice", PASSWORD, "http://evil.example", 403),
    ],
)
def test_bad_sign_ins_are_refused(
    client: TestClient, name: str, password: str, origin: str, status: int
) -> None:
    response = sign_in(client, name, password, origin)
    assert response.status_code == status
    assert client.get("/fleet").status_code == 303


def test_sign_in_without_the_form_token_is_refused(client: TestClient) -> None:
    client.get("/signin")
    response = client.post("/signin", data={"name": "alice", "password": PASSWORD}, headers={"Origin": BASE})
    assert response.status_code == 403


def test_password_guessing_gets_429(client: TestClient) -> None:
    for _ in range(10):
        assert sign_in(client, "alice", "guess").status_code == 401
    response = sign_in(client, "alice", PASSWORD)
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0


def test_without_a_users_file_nobody_signs_in(store: Store) -> None:
    response = sign_in(make_client(store, None))
    assert response.status_code == 503 and "user add" in response.text


# -- sessions ---------------------------------------------------------------------------------------


def test_sign_out_needs_the_session_token_and_ends_the_session(client: TestClient) -> None:
    sign_in(client)
    assert client.post("/signout", data={"csrf": "forged"}, headers={"Origin": BASE}).status_code == 403
    assert client.get("/fleet").status_code == 200
    response = client.post("/signout", data={"csrf": csrf_of(client)}, headers={"Origin": BASE})
    assert response.status_code == 303 and response.headers["location"] == "/signin?state=out"
    assert client.get("/fleet").status_code == 303


def test_a_removed_user_is_signed_out(client: TestClient, users: Path) -> None:
    sign_in(client)
    write_users(users, {"bob": hash_password("bob", PASSWORD)})
    deadline = time.monotonic() + 5
    while client.get("/fleet").status_code == 200:  # the file is looked at every 2 s
        assert time.monotonic() < deadline, "the removed user's session still works"
        time.sleep(0.2)
    assert "state=gone" in client.get("/fleet").headers["location"]


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("/devices/gw-1?x=1", "/devices/gw-1?x=1"),
        ("//evil.example/", "/fleet"),
        ("/\\evil.example", "/fleet"),
        ("https://evil.example/", "/fleet"),
        ("/fleet\r\nSet-Cookie: x=1", "/fleet"),
        (None, "/fleet"),
    ],
)
def test_only_local_paths_are_followed_after_sign_in(given: str | None, safe: str) -> None:
    assert safe_next(given) == safe


# -- headers and hosts ------------------------------------------------------------------------------


def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    for response in (client.get("/signin"), client.get("/fleet"), client.get("/api/devices")):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


def test_static_files_are_served_and_cached(client: TestClient) -> None:
    page = client.get("/signin").text
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        response = client.get(src.replace("&amp;", "&"))
        assert response.status_code == 200 and "immutable" in response.headers["cache-control"]


def test_an_unknown_host_is_refused(store: Store, users: Path) -> None:
    client = make_client(store, users, allowed_hosts=("127.0.0.1", "localhost"))
    assert client.get("/signin").status_code == 200
    assert client.get("/signin", headers={"Host": "rebound.example:8080"}).status_code == 400


# -- the pages --------------------------------------------------------------------------------------


def test_device_strings_are_escaped_in_every_page(client: TestClient) -> None:
    sign_in(client)
    for path in ("/fleet", "/devices/gw-1"):
        html = client.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    device = client.get("/devices/gw-1").text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in device


def test_the_fleet_page_lists_problems_first_with_a_summary(client: TestClient) -> None:
    sign_in(client)
    html = client.get("/fleet").text
    assert html.index('data-device="gw-2"') < html.index('data-device="gw-1"')  # offline first
    assert "1 online" in html and "1 offline" in html
    assert client.get("/fleet?show=online").text.count("data-device=") == 1
    assert client.get("/fleet?sort=nonsense").status_code == 400


def test_the_device_page_shows_events_summaries_drops_and_errors(client: TestClient) -> None:
    sign_in(client)
    html = client.get("/devices/gw-1").text
    for part in ("Alerts and anomalies", "raised", "Latest summaries", "Drops by reason", "Recent errors",
                 'id="history-chart"', 'id="stream-chart"'):
        assert part in html
    assert '<span class="label">Clock</span><span class="value">0.0 s</span>' in html
    assert client.get("/devices/nobody").status_code == 404
    assert client.get("/devices/bad%20id").status_code == 404


def test_the_console_json_routes(client: TestClient) -> None:
    sign_in(client)
    assert client.get("/api/fleet").json()["offline"] == 1
    streams = client.get("/api/devices/gw-1/streams").json()
    assert {s["stream"]: s["kind"] for s in streams} == {HOSTILE[0]: "events", "win": "summaries"}
    assert [s["fields"] for s in streams if s["stream"] == "win"] == [["count", "mean"]]
    latest = client.get("/api/devices/gw-1/latest?stream=win&limit=3").json()
    assert [r["seq"] for r in latest] == [8, 9, 10]
    assert len(client.get("/api/devices/gw-1/history").json()) == 1
    assert client.get("/api/devices/gw-1/history?since=x").status_code == 400
    assert client.get("/api/devices/gw-1/latest").status_code == 400
    listing = client.get("/api/devices?sort=backlog&limit=1")
    assert [d["device_id"] for d in listing.json()] == ["gw-1"] and listing.headers["x-total-count"] == "2"


def test_an_empty_fleet_and_a_device_without_status_or_records(tmp_path: Path, users: Path) -> None:
    empty = open_store(f"sqlite:///{tmp_path}/empty.db")
    try:
        client = make_client(empty, users)
        sign_in(client)
        assert "No device has reached the cloud yet." in client.get("/fleet").text
        assert client.get("/api/devices").json() == []
        assert client.get("/api/fleet").json()["worst_lag"] is None
        empty.write([("edge/gw-9/data", DataBatch("gw-9", "e", 0, []))])
        page = client.get("/devices/gw-9")
        assert page.status_code == 200 and "unknown" in page.text
        assert "No records from this device yet." in page.text
        assert client.get("/fleet?offset=400").status_code == 200  # past the end: the last page
    finally:
        empty.close()

"""The console under attack, for real: ``edge-cloud serve`` as a process on a real Mosquitto,
over HTTP. Sign-in guessing in parallel, integers no store holds, times no calendar holds."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from cloud_sync.server.console.users import write_users
from tests.conftest import Broker, IngestProcess
from tests.sync_helpers import cloud_records, wait_for
from tests.test_security_ingest import Device

pytestmark = pytest.mark.integration
USER, PASSWORD = "operator", "a long enough password"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("console-security")
    users = workdir / "users"
    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    write_users(users, {USER: hasher.hash(PASSWORD), "viewer": hasher.hash(PASSWORD)})
    broker = Broker(workdir).start()
    db = f"sqlite:///{workdir}/cloud.db"
    ingest = IngestProcess(workdir, broker.url, db, "--users", str(users)).start()
    try:
        yield {"url": f"http://127.0.0.1:{ingest.http_port}", "ingest": ingest, "broker": broker}
    finally:
        ingest.stop()
        broker.stop()


def _signin_form(http: httpx.Client) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', http.get("/signin").text)
    assert found is not None
    return found.group(1)


def test_parallel_guesses_are_reserved_before_the_password_is_verified(console: dict[str, Any]) -> None:
    url = console["url"]
    with httpx.Client(base_url=url, timeout=60) as http:
        token = _signin_form(http)

        def guess(number: int) -> int:
            return http.post("/signin", data={"csrf": token, "name": USER, "password": f"guess {number}"},
                             headers={"Origin": url}).status_code

        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            codes = list(pool.map(guess, range(30)))
        assert codes.count(401) == 10 and codes.count(429) == 20, codes
        # another user from the same address is not locked out by the operator's failures
        right = http.post("/signin", data={"csrf": token, "name": "someone", "password": "x"},
                          headers={"Origin": url})
        assert right.status_code == 401


def test_out_of_range_integers_and_times_give_clear_answers_not_500(
    console: dict[str, Any], tmp_path: Path
) -> None:
    ingest: IngestProcess = console["ingest"]
    device = Device(console["broker"].port, "far-future")
    try:
        device.records(2, data='{"start":1e300,"end":-1e300,"v":1e300}', ts=1e300)
        wait_for(lambda: len(cloud_records(ingest, "far-future")) == 2, 10, "the records at the cloud")
    finally:
        device.close()
    headers = {"Authorization": f"Bearer {ingest.token}"}
    with httpx.Client(base_url=console["url"], timeout=20, headers=headers) as api:
        for path in ("/api/devices/far-future/records?after_seq=100000000000000000000",
                     "/api/devices?offset=100000000000000000000",
                     "/api/devices?limit=100000000000000000000"):
            response = api.get(path)
            assert response.status_code == 400, (path, response.text)
            assert "must be between" in response.json()["error"]
    with httpx.Client(base_url=console["url"], timeout=20) as http:
        token = _signin_form(http)
        # (as another user than the guessing test's: the operator is locked out from this address)
        signed = http.post("/signin", data={"csrf": token, "name": "viewer", "password": PASSWORD},
                           headers={"Origin": console["url"]})
        assert signed.status_code == 303, signed.text
        page = http.get("/devices/far-future")
        assert page.status_code == 200, page.text[:2000]
        assert http.get("/fleet?offset=100000000000000000000").status_code in (200, 400)


def test_behind_the_proxy_a_guesser_counts_under_its_own_address_and_locks_no_one_out(
    console: dict[str, Any]
) -> None:
    """Behind the TLS proxy of docs/cloud.md, which sets ``X-Forwarded-For`` to the client's
    own address (replacing any the client sent), each client counts under that address (an IPv6
    one under its /64): the guesser gets 429 after 10 failures, and the user it guessed for
    signs in from elsewhere."""
    url = console["url"]

    def attempt(address: str, password: str, http: httpx.Client) -> int:
        return http.post("/signin", data={"csrf": _signin_form(http), "name": "viewer", "password": password},
                         headers={"Origin": url, "X-Forwarded-For": address}).status_code

    with httpx.Client(base_url=url, timeout=60) as http:
        codes = [attempt("203.0.113.7", f"guess {number}", http) for number in range(12)]
        assert codes == [401] * 10 + [429] * 2, codes
        assert attempt("203.0.113.7", PASSWORD, http) == 429  # even the right password, from there
        # an IPv6 guesser counts as its /64: a new address of it for every guess gains nothing
        codes = [attempt(f"2001:db8:7:7::{number:x}", f"guess {number}", http) for number in range(1, 13)]
        assert codes == [401] * 10 + [429] * 2, codes
    for address in ("2001:db8:7:8::1", "198.51.100.20"):  # the next /64 is someone else, and so is v4
        with httpx.Client(base_url=url, timeout=60) as http:
            assert attempt(address, PASSWORD, http) == 303


def test_the_documented_proxy_replaces_the_clients_forwarded_for() -> None:
    """A proxy that passes on the client's own ``X-Forwarded-For`` lets a guesser name a new
    address with every attempt (uvicorn trusts the header from 127.0.0.1), and one that sets
    none makes every client 127.0.0.1 (ten failures would lock a user out for everyone): the
    nginx configuration of docs/cloud.md sets it in every location that reaches the console."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "cloud.md").read_text()
    block = text.split("```nginx\n", 1)[1].split("```", 1)[0]
    locations = block.split("location ")[1:]
    assert locations
    for location in locations:
        assert "proxy_pass" in location
        assert "proxy_set_header X-Forwarded-For $remote_addr;" in location, location


def test_the_fleet_page_and_totals_hold_figures_at_the_top_of_64_bits(console: dict[str, Any]) -> None:
    """Two devices reporting ``backlog.rows = 2^63-1`` (and drops as large): their sum is beyond
    any 64-bit integer, yet /api/fleet and the fleet page answer, with bounded figures."""
    ingest: IngestProcess = console["ingest"]
    big = (1 << 63) - 1
    devices = [Device(console["broker"].port, name) for name in ("huge-1", "huge-2")]
    try:
        for device in devices:
            device.status({"backlog": {"rows": big, "bytes": big, "oldest_unsent_age_s": big},
                           "dropped": {"x": big}, "errors": {"mqtt": big}, "send_rate": big})
        headers = {"Authorization": f"Bearer {ingest.token}"}
        with httpx.Client(base_url=console["url"], timeout=20, headers=headers) as api:
            wait_for(lambda: {"huge-1", "huge-2"} <= {d["device_id"] for d in api.get("/api/devices").json()},
                     10, "both devices at the cloud")
            fleet = api.get("/api/fleet")
            assert fleet.status_code == 200, fleet.text
            assert 0 <= fleet.json()["backlog"] <= 10**15, fleet.json()
    finally:
        for device in devices:
            device.close()
    with httpx.Client(base_url=console["url"], timeout=20) as http:
        token = _signin_form(http)
        signed = http.post("/signin", data={"csrf": token, "name": "viewer", "password": PASSWORD},
                           headers={"Origin": console["url"]})
        assert signed.status_code == 303, signed.text
        page = http.get("/fleet")
        assert page.status_code == 200, page.text[:2000]
        assert "huge-1" in page.text and "huge-2" in page.text

"""The console's parts on their own: users file, sessions, sign-in throttle, live hub, formats,
what the fleet page says of a device that is away, and ``edge-cloud user``."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud_sync.server.cli import main as edge_cloud
from cloud_sync.server.console import format as fmt
from cloud_sync.server.console import outage
from cloud_sync.server.console.live import MAX_IDS, ChangeHub
from cloud_sync.server.console.security import is_loopback
from cloud_sync.server.console.sessions import Sessions
from cloud_sync.server.console.throttle import SignInThrottle
from cloud_sync.server.console.users import Users, UsersError, hash_password, read_users, write_users


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- users ------------------------------------------------------------------------------------------


def test_edge_cloud_user_add_list_remove(tmp_path: Path) -> None:
    users = tmp_path / "etc" / "users"
    runner = CliRunner()
    added = runner.invoke(edge_cloud, ["user", "add", "alice", "--users", str(users), "--password-stdin"],
                          input="a long enough password\n")
    assert added.exit_code == 0, added.output
    assert os.stat(users).st_mode & 0o777 == 0o600
    assert read_users(users)["alice"].startswith("$argon2id$")
    assert Users(users).verify("alice", "a long enough password")
    assert not Users(users).verify("alice", "a long enough passworD")
    listed = runner.invoke(edge_cloud, ["user", "list", "--users", str(users)])
    assert listed.output == "alice\n"
    removed = runner.invoke(edge_cloud, ["user", "remove", "alice", "--users", str(users)])
    assert removed.exit_code == 0 and read_users(users) == {}


@pytest.mark.parametrize(
    ("name", "password", "says"),
    [("alice", "short", "too short"), ("al ice", "a long enough password", "user name"),
     ("<script>", "a long enough password", "user name")],
)
def test_user_add_refuses_bad_names_and_short_passwords(
    tmp_path: Path, name: str, password: str, says: str
) -> None:
    args = ["user", "add", name, "--users", str(tmp_path / "u"), "--password-stdin"]
    result = CliRunner().invoke(edge_cloud, args, input=password + "\n")
    assert result.exit_code == 2 and says in result.output


def test_a_broken_users_file_is_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# users\nalice:$argon2id$v=19$x\nbob:plaintext\n")
    with pytest.raises(UsersError, match="users:3"):
        read_users(path)
    with pytest.raises(UsersError, match="cannot read"):
        read_users(tmp_path / "missing")


def test_serve_refuses_an_unreadable_users_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(edge_cloud, ["serve", "--broker", "mqtt://127.0.0.1:1", "--db",
                                             f"sqlite:///{tmp_path}/c.db", "--users", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "--users" in result.output


def test_the_users_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_users(path, {})
    users = Users(path, recheck=0.0)
    assert users.fingerprint("alice") is None
    write_users(path, {"alice": hash_password("alice", "a long enough password")})
    assert users.fingerprint("alice") is not None
    path.write_text("garbage line\n")  # a broken edit keeps the last good list
    assert users.fingerprint("alice") is not None


# -- sessions and throttle --------------------------------------------------------------------------


def test_sessions_end_when_idle_too_old_or_the_password_changed() -> None:
    clock = Clock()
    sessions = Sessions(idle=100, lifetime=1000, clock=clock)
    token, session = sessions.create("alice", "fp1")
    assert sessions.get(token, {"alice": "fp1"}.get) is session
    assert sessions.get(token + "x", {"alice": "fp1"}.get) is None
    clock.now += 99
    assert sessions.get(token, {"alice": "fp1"}.get) is session  # touched: idle starts again
    clock.now += 101
    assert sessions.get(token, {"alice": "fp1"}.get) is None and len(sessions) == 0
    token, _ = sessions.create("alice", "fp1")
    for _ in range(11):  # in use all along, up to 990 s
        clock.now += 90
        assert sessions.get(token, {"alice": "fp1"}.get) is not None
    clock.now += 90
    assert sessions.get(token, {"alice": "fp1"}.get) is None  # past the lifetime
    token, _ = sessions.create("alice", "fp1")
    assert sessions.get(token, {"alice": "fp2"}.get) is None


def test_sessions_are_bounded() -> None:
    sessions = Sessions(limit=3)
    tokens = [sessions.create("alice", "fp")[0] for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.get(tokens[0], lambda _: "fp") is None and sessions.get(tokens[4], lambda _: "fp")


def test_the_throttle_reserves_attempts_per_client_and_user_together() -> None:
    clock = Clock()
    throttle = SignInThrottle(limit=3, client_limit=5, window=60, clock=clock)
    alice = throttle.keys("1.2.3.4", "alice")
    for _ in range(3):
        assert throttle.reserve(alice) == 0  # reserved before verifying: no await in between
    assert throttle.reserve(alice) == 60
    assert throttle.reserve(throttle.keys("5.6.7.8", "alice")) == 0  # no lock-out from elsewhere
    bob = throttle.keys("1.2.3.4", "bob")
    assert throttle.reserve(bob) == 0 and throttle.reserve(bob) == 0
    assert throttle.reserve(throttle.keys("1.2.3.4", "carol")) == 60  # the address's own limit
    clock.now += 30
    assert throttle.reserve(alice) == 30
    clock.now += 31
    assert throttle.reserve(alice) == 0
    throttle.succeeded(alice)  # a right password: its attempt and the pair's count go
    assert throttle.reserve(alice) == 0


# -- live hub ---------------------------------------------------------------------------------------


async def test_the_hub_tells_each_listener_what_it_asked_for() -> None:
    hub = ChangeHub(min_gap=0.0, ping=0.05)
    async with hub.listen() as everyone, hub.listen("gw-2") as one:
        hub.publish(["gw-1", "gw-2"])
        hub.publish(["gw-3"])
        assert everyone.take() == (["gw-1", "gw-2", "gw-3"], False)
        assert one.take() == (["gw-2"], False)
        hub.publish(f"gw-{i}" for i in range(MAX_IDS + 1))
        ids, everything = everyone.take()
        assert len(ids) == MAX_IDS and everything


async def test_the_event_stream_coalesces_pings_and_ends_on_close() -> None:
    hub = ChangeHub(min_gap=0.2, ping=0.1)
    allowed = [True]
    async with hub.listen() as listener:
        stream = hub.events(listener, lambda: allowed[0])
        assert await anext(stream) == b"retry: 2000\n\n"
        hub.publish(["gw-1"])
        assert await anext(stream) == b'event: changed\ndata: {"devices":["gw-1"],"all":false}\n\n'
        hub.publish(["gw-2"])
        hub.publish(["gw-3"])  # within min_gap: one event for both
        assert b'["gw-2","gw-3"]' in await asyncio.wait_for(anext(stream), 1)
        assert await asyncio.wait_for(anext(stream), 1) == b": ping\n\n"
        allowed[0] = False
        hub.publish(["gw-1"])
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 1)
        allowed[0] = True
        stream = hub.events(listener, lambda: True)
        await anext(stream)
        hub.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 1)


# -- formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "\u2013"), (0, "0 s"), (4.25, "4.2 s"), (59, "59 s"), (60, "1 min"), (3599, "59 min"),
     (3600, "1 h"), (3 * 3600 + 5 * 60, "3 h 5 min"), (86400 * 2 + 3600 * 4, "2 d 4 h")],
)
def test_durations(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"), [(None, "\u2013"), (0, "0 B"), (999, "999 B"), (1500, "1.5 kB"), (250_000, "250 kB"),
                    (3_400_000, "3.4 MB")],
)
def test_sizes(n: float | None, text: str) -> None:
    assert fmt.size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "\u2013"), (0.0, "0.0 s"), (-0.04, "0.0 s"), (0.049, "0.0 s"), (-0.06, "-0.1 s"),
     (1.25, "+1.2 s"), (float("nan"), "\u2013")],
)
def test_clock_offsets_have_a_sign_but_no_negative_zero(seconds: float | None, text: str) -> None:
    assert fmt.skew(seconds) == text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("app.localhost", True), ("10.0.0.1", False), ("example.com", False), (None, False)],
)
def test_loopback_hosts(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- a device that is away (fleet page) -------------------------------------------------------------

AWAY = {"state": "offline", "last_seen": 1000.0, "backlog": 2, "send_rate": 4.0, "oldest_unsent_age_s": 1.5}


def test_an_away_devices_figures_are_stale_and_only_those() -> None:
    assert outage.is_stale(AWAY) and outage.is_stale({**AWAY, "state": "silent"})
    assert not outage.is_stale({**AWAY, "state": "online"})
    assert not outage.is_stale({**AWAY, "last_seen": None})  # never reported: nothing to age


def test_the_backlog_is_estimated_only_for_a_device_that_was_keeping_up() -> None:
    assert outage.backlog_estimate(AWAY, now=1030.0) == 2 + 4 * 30
    assert outage.backlog_estimate(AWAY, now=990.0) == 2  # a clock behind the report: no negative growth
    # already behind when it went away: its send rate is not the rate it makes records at
    assert outage.backlog_estimate({**AWAY, "oldest_unsent_age_s": 600.0}, now=1030.0) is None
    assert outage.backlog_estimate({**AWAY, "send_rate": 0.0}, now=1030.0) is None
    assert outage.backlog_estimate({**AWAY, "backlog": None}, now=1030.0) is None
    assert outage.backlog_estimate({**AWAY, "state": "online"}, now=1030.0) is None  # live figures


def test_the_sparkline_keeps_the_last_hours_outage_shaded() -> None:
    now = 10_000.0
    points = [
        {"at": now - 5000, "online": False, "oldest_unsent_age_s": 999.0},  # older than the hour
        {"at": now - 600, "online": True, "oldest_unsent_age_s": 0.0},
        {"at": now - 300, "online": False, "oldest_unsent_age_s": 40.0},
        {"at": now - 240, "online": True, "oldest_unsent_age_s": 70.0},
        {"at": now - 180, "online": True, "oldest_unsent_age_s": 1.0},
    ]
    svg = str(outage.sparkline(points, now))
    assert svg.count('class="spark-off"') == 1
    assert 'aria-label="last 10 min: worst lag 70 s, offline for a while"' in svg
    line = re.search(r'<polyline points="([^"]*)"', svg)
    assert line is not None and len(line.group(1).split()) == 4  # the point before the hour is left out
    quiet = str(outage.sparkline([{**p, "online": True} for p in points[1:]], now))
    assert "spark-off" not in quiet and "offline" not in quiet
    assert str(outage.sparkline(points[:2], now)) == f'<span class="spark-none">{fmt.DASH}</span>'


def test_an_ipv6_client_counts_as_its_64() -> None:
    from cloud_sync.server.console.throttle import client_network

    assert client_network("2001:db8:1:2::7") == client_network("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:3::7") != client_network("2001:db8:1:2::7")
    assert client_network("::ffff:203.0.113.7") == client_network("203.0.113.7") == "203.0.113.7"
    assert client_network("?") == "?"

"""The console with 10,000 devices: the fleet page's first render and ``GET /api/devices``.

Method: a store is filled with 10,000 devices (a fifth offline, most with a backlog, some
silent, some with drops and errors) through the ingest's own write path, and a second one with
100. Each is served by the console (``create_app`` with a ``Console``, under uvicorn) in a
process of its own; a client on one kept-alive connection times whole HTTP requests (query,
render or JSON, transfer), signed in as a user or with a bearer token. Figures are medians.

Baselines, measured in the same run: the same requests on the 100-device store, and, for the
API, how the issue-4 API built the list (every device state decoded, ``device_json`` for each,
the standard library's JSON), timed in process, so without any HTTP cost.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from bench.common import Result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = "bench-token"
USER, PASSWORD = "bench", "bench password 123"
TARGET_MS = 300.0


def fill(url: str, devices: int) -> None:
    """``devices`` devices written as the ingest writes them, 500 a transaction."""
    from cloud_sync.server.ledger import Incoming, Status
    from cloud_sync.server.store import open_store

    store = open_store(url)
    now = time.time()
    try:
        for start in range(0, devices, 500):
            items: list[tuple[str, Incoming]] = []
            for i in range(start, min(devices, start + 500)):
                rows = (i * 7919) % 5000 if i % 3 else 0
                age = (i % 3600) if rows else None
                doc = {
                    "online": i % 5 != 0, "version": f"0.{i % 4}.0", "send_rate": float(i % 50),
                    "backlog": {"rows": rows, "bytes": rows * 200, "oldest_unsent_age_s": age},
                    "dropped": {"buffer_full": i % 7} if i % 11 == 0 else {},
                    "errors": {"resends": i % 5} if i % 13 == 0 else {},
                }
                at = now - (600 if i % 17 == 0 else i % 60)
                items.append((f"edge/gw-{i:05d}/status", Status(f"gw-{i:05d}", doc, at)))
            store.write(items, now=now)
    finally:
        store.close()


def serve(db_url: str, port: int, users: Path) -> None:
    """The console and its API on ``port`` (no ingest), until killed."""
    import uvicorn

    from cloud_sync.server.console import Console, ConsoleSettings
    from cloud_sync.server.store import open_store
    from cloud_sync.server.web import create_app

    store = open_store(db_url)
    console = Console(store, ConsoleSettings(users_file=users))
    app = create_app(store, [TOKEN], None, console)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Client:
    """One kept-alive HTTP connection to the console, signed in."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookie = ""
        self._sign_in()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers={"Cookie": self.cookie, **(headers or {})})
        response = self.conn.getresponse()
        return response.status, response.read()

    def timed(self, path: str, headers: dict[str, str] | None = None) -> float:
        started = time.perf_counter()
        status, body = self.get(path, headers)
        elapsed = (time.perf_counter() - started) * 1000
        if status != 200 or not body:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        return elapsed

    def _sign_in(self) -> None:
        self.conn.request("GET", "/signin")
        response = self.conn.getresponse()
        cookie = response.getheader("set-cookie", "").split(";")[0]
        token = re.search(rb'name="csrf" value="([^"]+)"', response.read())
        assert token is not None
        form = urllib.parse.urlencode({"csrf": token.group(1).decode(), "name": USER, "password": PASSWORD,
                                       "next": "/fleet"})
        origin = f"http://127.0.0.1:{self.port}"
        self.conn.request("POST", "/signin", body=form, headers={
            "Cookie": cookie, "Origin": origin, "Content-Type": "application/x-www-form-urlencoded"})
        response = self.conn.getresponse()
        response.read()
        if response.status != 303:
            raise RuntimeError(f"sign-in failed: HTTP {response.status}")
        self.cookie = response.getheader("set-cookie", "").split(";")[0]


class Server:
    """``serve`` in a process of its own, on a free port."""

    def __init__(self, db_url: str, users: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_console", "--serve", db_url, str(self.port), str(users)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the console did not start") from None
                time.sleep(0.05)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


def median_ms(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    measure()  # warm: the first request opens the thread's store connection
    samples = [measure() for _ in range(runs)]
    return statistics.median(samples), samples


def naive_api_ms(db_url: str) -> float:
    """The issue-4 ``/api/devices``: decode every state, ``device_json`` each, stdlib JSON."""
    from cloud_sync.server.store import open_store
    from cloud_sync.server.web import device_json

    store = open_store(db_url)
    try:
        started = time.perf_counter()
        now = time.time()
        body = json.dumps([device_json(state, now) for state in store.devices()])
        assert body
        return (time.perf_counter() - started) * 1000
    finally:
        store.close()


def _users(workdir: Path) -> Path:
    from argon2 import PasswordHasher

    from cloud_sync.server.console.users import write_users

    path = workdir / "users"
    write_users(path, {USER: PasswordHasher().hash(PASSWORD)})
    return path


def measure(big: str, small: str, users: Path, runs: int) -> dict[str, tuple[float, list[float]]]:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    figures: dict[str, tuple[float, list[float]]] = {}
    for name, url in (("big", big), ("small", small)):
        with Server(url, users) as server:
            timed = Client(server.port).timed
            figures[f"{name} fleet"] = median_ms(runs, partial(timed, "/fleet"))
            figures[f"{name} api"] = median_ms(runs, partial(timed, "/api/devices", bearer))
            if name == "big":
                figures["big problems"] = median_ms(
                    runs, partial(timed, "/fleet?show=problems&sort=lag&q=gw-0"))
                figures["big api page"] = median_ms(
                    runs, partial(timed, "/api/devices?sort=lag&limit=100&offset=5000", bearer))
    figures["naive"] = median_ms(max(3, runs // 3), partial(naive_api_ms, big))
    return figures


def results(engine: str, figures: dict[str, tuple[float, list[float]]], fill_s: float) -> list[Result]:
    note = f"{engine}; 10,000 devices written through the ingest path in {fill_s:.1f} s"
    return [
        _result(f"fleet page first render, 10,000 devices ({engine})", figures["big fleet"],
                "same page, 100 devices", figures["small fleet"], note),
        _result(f"GET /api/devices, all 10,000 devices ({engine})", figures["big api"],
                "issue-4 API: every state decoded (in process)", figures["naive"],
                "every device in one JSON array (5 MB)"),
        _result(f"GET /api/devices, 100 devices ({engine})", figures["small api"], "", None, "for scale"),
        _result(f"fleet page: problems, by lag, id filter, 10,000 devices ({engine})",
                figures["big problems"], "same page, 100 devices", figures["small fleet"],
                "filter and sort in SQL"),
        _result(f"GET /api/devices?sort=lag&limit=100&offset=5000 ({engine})", figures["big api page"],
                "", None, "a page, with X-Total-Count"),
    ]


@contextlib.contextmanager
def postgres_databases() -> Iterator[tuple[str, str] | None]:
    """Two fresh databases on the server at ``EDGE_TEST_PG``, or None when none answers."""
    import psycopg

    admin_url = os.environ.get("EDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    names = [f"edge_bench_console_{os.getpid()}_{n}" for n in ("big", "small")]
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.Error:
        yield None
        return
    with admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = admin_url.rsplit("/", 1)[0]
            yield f"{base}/{names[0]}", f"{base}/{names[1]}"
        finally:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(quick: bool) -> list[Result]:
    """SQLite always; PostgreSQL too in a full run, when a server answers."""
    runs = 5 if quick else 15
    out: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-console-") as tmp:
        workdir = Path(tmp)
        users = _users(workdir)
        engines: list[tuple[str, str, str]] = [
            ("SQLite", f"sqlite:///{workdir}/10k.db", f"sqlite:///{workdir}/100.db")
        ]
        with contextlib.ExitStack() as stack:
            pg = None if quick else stack.enter_context(postgres_databases())
            if pg is not None:
                engines.append(("PostgreSQL", *pg))
            for engine, big, small in engines:
                started = time.perf_counter()
                fill(big, 10_000)
                fill_s = time.perf_counter() - started
                fill(small, 100)
                out += results(engine, measure(big, small, users, runs), fill_s)
    return out


def _result(metric: str, measured: tuple[float, list[float]], baseline_name: str,
            baseline: tuple[float, list[float]] | None, note: str) -> Result:
    value, samples = measured
    return Result(
        benchmark="console", metric=metric, value=round(value, 1), unit="ms",
        baseline_name=baseline_name, baseline=round(baseline[0], 1) if baseline else None,
        target=f"< {TARGET_MS:.0f} ms", met=value < TARGET_MS, runs=[round(s, 1) for s in samples],
        baseline_runs=[round(s, 1) for s in baseline[1]] if baseline else [], note=note,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=3, metavar=("DB_URL", "PORT", "USERS"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), Path(args.serve[2]))
    else:
        for result in run(quick=True):
            print(result)

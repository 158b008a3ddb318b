"""The one-command demo: brokers, a cloud ingest with its console, three agents, simulated
sensors, and a link cut that the console shows as a device falling behind and catching up.

Every process is a child of this one, in its own process group, and all of them are stopped
on Ctrl-C (or SIGTERM), whatever state they are in. State lives in a temporary folder, or in
``--keep DIR``, which is left for inspection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from simulators.link import LinkProxy
from simulators.listeners import PortInUse, free_port, wait_until_listening

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIGS = ROOT / "configs" / "demo"
GATEWAYS = ("gw-a", "gw-b", "gw-c")
CUT_GATEWAY = "gw-c"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PORT_TRIES = 3  # a port chosen free and taken by another program before the child binds it


async def _console_answers(port: int) -> bool:
    """Whether the port's ``/healthz`` answers as an edge-cloud console's does."""

    def get() -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            body = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            connection.close()
        return response.status == 200 and isinstance(body, dict) and {"ok", "ingest_connected"} <= body.keys()

    return await asyncio.to_thread(get)


@dataclass
class Children:
    """The demo's child processes, each logging to a file of its own."""

    folder: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def start(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with self.log(name).open("ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                start_new_session=True,  # Ctrl-C reaches us alone; we stop the children in order
            )
        self.processes.append((name, process))
        return process

    def discard(self, process: subprocess.Popen[bytes]) -> None:
        """Forget a child that has exited (a start that is retried)."""
        process.wait()
        self.processes = [(name, child) for name, child in self.processes if child is not process]

    async def start_listening(
        self, name: str, command: Callable[[int], list[str]], port: int | None = None, *,
        timeout: float = 15.0, ready: Callable[[int], Awaitable[bool]] | None = None,
        choose: Callable[[], int] = free_port,
    ) -> int:
        """Start ``name`` on ``port``, or on a free port of our choosing, and return the port once
        the child's own listener is there (and passes ``ready``). A chosen port that another
        program takes before the child binds it is given up for another, up to three times; a
        port asked for is not: ``PortInUse`` names it."""
        tries = 1 if port is not None else PORT_TRIES
        for attempt in range(1, tries + 1):
            chosen = port if port is not None else choose()
            log = self.log(name)
            log_from = log.stat().st_size if log.exists() else 0
            process = self.start(name, command(chosen))
            try:
                await wait_until_listening(name, process, chosen, log, timeout, log_from, ready)
            except PortInUse:
                self.discard(process)
                if attempt == tries:
                    raise
                print(f"{name}: port {chosen} was taken by another program; trying another", flush=True)
            else:
                return chosen
        raise AssertionError("unreachable")

    def check(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: see {self.folder / name}.log")

    def stop_all(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 12
        for _, process in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _broker_config(folder: Path, name: str, port: int) -> Path:
    path = folder / f"{name}-mosquitto.conf"
    path.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nset_tcp_nodelay true\n"
    )
    return path


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _broker_command(folder: Path, name: str) -> Callable[[int], list[str]]:
    return lambda port: [MOSQUITTO, "-c", str(_broker_config(folder, name, port))]


async def run_demo(folder: Path, cut_after: float, cut_for: float, http_port: int | None) -> None:
    children = Children(folder)
    password = secrets.token_urlsafe(9)
    link: LinkProxy | None = None
    try:
        local_port = await children.start_listening("local-broker", _broker_command(folder, "local"))
        cloud_port = await children.start_listening("cloud-broker", _broker_command(folder, "cloud"))
        link = LinkProxy(("127.0.0.1", 0), ("127.0.0.1", cloud_port))  # binds port 0 itself: no race
        await link.start()
        link_port = link.port

        users = folder / "users"
        subprocess.run(
            [_bin("edge-cloud"), "user", "add", "demo", "--users", str(users), "--password-stdin"],
            input=f"{password}\n".encode(), check=True, capture_output=True,
        )
        http_port = await children.start_listening(
            "edge-cloud", lambda port: [
                _bin("edge-cloud"), "serve", "--broker", f"mqtt://127.0.0.1:{cloud_port}",
                "--db", f"sqlite:///{folder / 'cloud.db'}", "--http", f"127.0.0.1:{port}",
                "--users", str(users), "--history-step", "5",
            ], http_port,
            timeout=90,  # a loaded 2-core board takes its time
            ready=_console_answers,  # its own listener, and it answers as a console does
        )

        for index, gateway in enumerate(GATEWAYS):
            cloud = link_port if gateway == CUT_GATEWAY else cloud_port
            config = DEMO_CONFIGS / f"{gateway}.toml"
            children.start(gateway, [_bin("edge-agent"), "run", "-c", str(config)], env={
                "EDGE_AGENT__DATA_DIR": f'"{folder / gateway}"',
                "EDGE_AGENT__SOURCES__0__URL": f"mqtt://127.0.0.1:{local_port}",
                "EDGE_AGENT__CLOUD__URL": f"mqtt://127.0.0.1:{cloud}",
            })
            children.start(f"sensors-{gateway}", [
                _bin("edge-sim"), "sensors", "--broker", f"mqtt://127.0.0.1:{local_port}",
                "--prefix", f"sensors/{gateway}/", "--sensors", "6", "--rate", "2",
                "--duration", "864000", "--seed", str(100 + index), "--malformed", "0.005",
                "--time-scale", "600",
            ])

        print(
            f"\nEdge Agent demo is running ({len(GATEWAYS)} gateways, state in {folder}).\n"
            f"  Console:  http://127.0.0.1:{http_port}/   sign in as  demo / {password}\n"
            f"  Status:   EDGE_AGENT__DATA_DIR='\"{folder / 'gw-a'}\"' "
            f"{_bin('edge-agent')} status -c {DEMO_CONFIGS / 'gw-a.toml'}\n"
            f"  In {cut_after:.0f} s the link of {CUT_GATEWAY} is cut for {cut_for:.0f} s: watch it fall "
            "behind and catch up.\n  Ctrl-C stops everything.\n",
            flush=True,
        )
        started = time.monotonic()
        cut = healed = False
        while True:
            await asyncio.sleep(1.0)
            children.check()
            elapsed = time.monotonic() - started
            if not cut and elapsed >= cut_after:
                link.set_mode("drop")
                cut = True
                print(f"[{elapsed:5.0f} s] link of {CUT_GATEWAY} cut", flush=True)
            elif cut and not healed and elapsed >= cut_after + cut_for:
                link.set_mode("pass")
                healed = True
                print(f"[{elapsed:5.0f} s] link of {CUT_GATEWAY} restored", flush=True)
    finally:
        children.stop_all()
        if link is not None:
            await link.stop()


async def _until_signalled(folder: Path, cut_after: float, cut_for: float, http_port: int | None) -> None:
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run_demo(folder, cut_after, cut_for, http_port)
    print("\nstopped; nothing left running", flush=True)


def main(keep: Path | None, cut_after: float, cut_for: float, http_port: int | None) -> None:
    folder = keep or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_until_signalled(folder, cut_after, cut_for, http_port))
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"state kept in {folder}")

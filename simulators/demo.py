"""The one-command demo: brokers, a cloud ingest with its console, three agents, simulated
sensors, and a link cut that the console shows as a device falling behind and catching up.

Every process is a child of this one, in its own process group, and all of them are stopped
on Ctrl-C (or SIGTERM), whatever state they are in. State lives in a temporary folder, or in
``--keep DIR``, which is left for inspection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulators.link import LinkProxy

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIGS = ROOT / "configs" / "demo"
GATEWAYS = ("gw-a", "gw-b", "gw-c")
CUT_GATEWAY = "gw-c"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class Children:
    """The demo's child processes, each logging to a file of its own."""

    folder: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches us alone; we stop the children in order
        )
        self.processes.append((name, process))

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


async def run_demo(folder: Path, cut_after: float, cut_for: float, http_port: int | None) -> None:
    children = Children(folder)
    local_port, cloud_port, link_port = free_port(), free_port(), free_port()
    http_port = http_port or free_port()
    password = secrets.token_urlsafe(9)
    link = LinkProxy(("127.0.0.1", link_port), ("127.0.0.1", cloud_port))
    try:
        for name, port in (("local", local_port), ("cloud", cloud_port)):
            children.start(f"{name}-broker", [MOSQUITTO, "-c", str(_broker_config(folder, name, port))])
            await wait_for_port(port)
        await link.start()

        users = folder / "users"
        subprocess.run(
            [_bin("edge-cloud"), "user", "add", "demo", "--users", str(users), "--password-stdin"],
            input=f"{password}\n".encode(), check=True, capture_output=True,
        )
        children.start("edge-cloud", [
            _bin("edge-cloud"), "serve", "--broker", f"mqtt://127.0.0.1:{cloud_port}",
            "--db", f"sqlite:///{folder / 'cloud.db'}", "--http", f"127.0.0.1:{http_port}",
            "--users", str(users), "--history-step", "5",
        ])
        await wait_for_port(http_port, timeout=90)  # a loaded 2-core board takes its time

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

"""A benchmark's own Mosquitto, and the readings a receiver drains from it (bench/loadgen.py
publishes them)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from tests.conftest import free_port, wait_for_port


class BenchBroker:
    """Mosquitto on a free port with no queue limit (so a backlog can be pre-filled), optionally
    pinned to one core."""

    def __init__(self, workdir: Path, cpu: int | None = None) -> None:
        self.port = free_port()
        self.config = workdir / f"bench-mosquitto-{self.port}.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nqueue_qos0_messages true\nset_tcp_nodelay true\n"
        )
        self.cpu = cpu
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BenchBroker:
        command = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(self.config)]
        if self.cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(self.cpu), *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)


def readings(count: int, sensors: int = 100, start: float = 1_700_000_000.0) -> list[tuple[str, bytes]]:
    """``count`` readings round-robin over ``sensors``, 10 ms apart per sensor (~100 per 1 s window)."""
    out = []
    for i in range(count):
        sensor = i % sensors
        ts = start + (i // sensors) * 0.01
        payload = json.dumps({"value": round(20 + (i % 37) * 0.1, 2), "ts": round(ts, 3), "unit": "C"})
        out.append((f"sensors/s{sensor}", payload.encode()))
    return out

"""A poor link between a gateway and its cloud: two network namespaces joined by a veth pair,
each direction shaped to 256 kbit/s with 150 ms of delay (300 ms round trip) and 2 % random loss.

With ``sch_netem`` in the kernel, ``tc netem`` does all three on each end's egress. A kernel built
without it (some VM kernels) still has the token bucket filter and iptables' NFQUEUE: ``tbf``
limits the rate on each end's egress, and on each end's ingress every packet is handed to
``tests/link_delay.py``, which drops 2 % at random and releases the rest 150 ms later. Either way
the bytes counted on the veth ends are the bytes a real wire would carry, retransmissions
included. ``method`` says which one is in use.

    with PoorLink() as link:
        link.call("cloud", broker.start)    # on a thread inside the namespace: the sockets it
        link.call("cloud", ingest.api, "/api/devices")  # opens and the processes it starts are there
        print(link.wire_bytes())

``write_hour``, ``hour_config`` and ``held`` make the backlog the link is tested with (the
poor-link test and ``bench/bench_link.py`` share them).

Processes started inside the namespaces are the test's own; ``close`` ends whatever of them is
still running, then deletes both namespaces (and so the veth pair), also when the test failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.outbox import Outbox
from tests.conftest import Broker, agent_config

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
DELAY_SCRIPT = Path(__file__).with_name("link_delay.py")
SIDES = ("device", "cloud")


@dataclass(frozen=True)
class Shape:
    """What each direction of the link does to packets."""

    delay: float = 0.15  # one way, seconds
    loss: float = 0.02
    rate_kbit: int = 256


POOR = Shape()


class LinkUnavailable(Exception):
    """This machine cannot build the link (no root, no netns, neither netem nor tbf + NFQUEUE)."""


class PoorLink:
    def __init__(self, shape: Shape = POOR) -> None:
        self.shape = shape
        tag = f"{os.getpid() % 100_000}{int(time.monotonic() * 1000) % 1000}"
        self.netns = {"device": f"edge-{tag}-dev", "cloud": f"edge-{tag}-cloud"}
        self.veth = {"device": f"pl{tag}d", "cloud": f"pl{tag}c"}
        self.address = {"device": "10.200.0.1", "cloud": "10.200.0.2"}
        self.method = ""
        self._delays: list[subprocess.Popen[bytes]] = []
        self._threads: dict[str, ThreadPoolExecutor] = {}

    # -- building and tearing down ----------------------------------------------------------------

    def __enter__(self) -> PoorLink:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if os.geteuid() != 0:
            raise LinkUnavailable("network namespaces need root")
        if not shutil.which("ip") or not shutil.which("tc"):
            raise LinkUnavailable("ip and tc are missing (apt-get install iproute2)")
        device, cloud = self.netns["device"], self.netns["cloud"]
        for ns in (device, cloud):
            _run(["ip", "netns", "add", ns], LinkUnavailable)
        _run(["ip", "link", "add", self.veth["device"], "type", "veth", "peer", "name", self.veth["cloud"]],
             LinkUnavailable)
        for side in SIDES:
            ns, dev = self.netns[side], self.veth[side]
            _run(["ip", "link", "set", dev, "netns", ns])
            _run(["ip", "-n", ns, "addr", "add", f"{self.address[side]}/24", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if self._netem():
            self.method = "tc netem"
        else:
            self._tbf_and_nfqueue()
            self.method = "tc tbf + NFQUEUE delay and loss (this kernel has no sch_netem)"

    def _netem(self) -> bool:
        s = self.shape
        for side in SIDES:
            done = subprocess.run(
                ["ip", "netns", "exec", self.netns[side], "tc", "qdisc", "add", "dev", self.veth[side],
                 "root", "netem", "delay", f"{s.delay * 1000:.0f}ms", "loss", f"{s.loss * 100:g}%",
                 "rate", f"{s.rate_kbit}kbit", "limit", "1000"],
                capture_output=True, text=True,
            )
            if done.returncode:
                if "unknown" in done.stderr.lower():
                    return False
                raise RuntimeError(f"tc netem: {done.stderr.strip()}")
        return True

    def _tbf_and_nfqueue(self) -> None:
        if not shutil.which("iptables"):
            raise LinkUnavailable("no sch_netem in this kernel, and no iptables for the NFQUEUE stage "
                                  "(apt-get install iptables)")
        s = self.shape
        for queue, side in enumerate(SIDES, start=1):
            ns, dev = self.netns[side], self.veth[side]
            # a queue of about 4 s at the rate, like a mobile link's buffer
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                  "rate", f"{s.rate_kbit}kbit", "burst", "3000", "limit", str(s.rate_kbit * 128 * 4)],
                 LinkUnavailable)
            _run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", dev, "-j", "NFQUEUE",
                  "--queue-num", str(queue)], LinkUnavailable)
            delay = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(DELAY_SCRIPT), "--queue", str(queue),
                 "--delay", str(s.delay), "--loss", str(s.loss), "--seed", str(queue)],
                stdout=subprocess.PIPE,
            )
            self._delays.append(delay)
            assert delay.stdout is not None
            if delay.stdout.readline().strip() != b"bound":
                raise LinkUnavailable(f"the NFQUEUE delay stage did not start in {ns}")

    def close(self) -> None:
        for pool in self._threads.values():
            pool.shutdown(wait=True)
        self._threads.clear()
        for ns in self.netns.values():
            # whatever still runs in our namespaces was started by this test
            listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for delay in self._delays:
            delay.wait(10)
        for ns in self.netns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # -- using it -------------------------------------------------------------------------------

    def cmd(self, side: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``side``'s namespace."""
        return ["ip", "netns", "exec", self.netns[side], *argv]

    def call(self, side: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread that lives in ``side``'s namespace: the sockets it opens and the
        processes it starts are there."""
        if side not in self._threads:
            self._threads[side] = ThreadPoolExecutor(
                1, thread_name_prefix=f"netns-{side}", initializer=_enter, initargs=(self.netns[side],)
            )
        return self._threads[side].submit(fn, *args).result()

    def cut(self, cut: bool = True) -> None:
        """Take the gateway's end of the link down (``cut``) or up again: an outage."""
        _run(["ip", "-n", self.netns["device"], "link", "set", self.veth["device"], "down" if cut else "up"])

    def wire_bytes(self) -> int:
        """Bytes sent so far across the link, both directions (each end's transmit counter)."""
        total = 0
        for side in SIDES:
            out = _run(["ip", "-n", self.netns[side], "-s", "-j", "link", "show", "dev", self.veth[side]])
            total += int(json.loads(out)[0]["stats64"]["tx"]["bytes"])
        return total


def _enter(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
    finally:
        os.close(fd)


def _run(argv: list[str], error: type[Exception] = RuntimeError) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise error(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


# -- the backlog: an hour offline at 100 readings/s through the shipped pipeline -----------------

SENSORS = 100
READINGS = 360_000  # an hour at 100 readings/s
WINDOW = """
[[modules]]
name = "win"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "60s"
stats = ["count", "mean", "min", "max"]
"""


def write_hour(path: Path, start: float) -> None:
    """READINGS lines ``sensor value ts``: SENSORS sensors each reading once a second from
    ``start``, values with noise as a real sensor's (the summaries compress no better than
    real ones would)."""
    rng = random.Random(7)
    with path.open("w") as out:
        for i in range(READINGS):
            value = 15 + i % SENSORS * 0.1 + rng.gauss(0, 0.5)
            out.write(f"s{i % SENSORS} {value:.2f} {start + i // SENSORS:.0f}\n")


def hour_config(workdir: Path, readings: Path, cloud_url: str, name: str = "agent.toml") -> Path:
    """An agent that reads ``readings`` from the beginning into configs/pi.toml's 60 s window and
    syncs to ``cloud_url`` with the shipped settings, but for the reconnect delay's ceiling (5 s):
    the link is down on purpose while the backlog builds, and waiting up to a minute for the next
    try proves nothing."""
    source = f"""
[[sources]]
name = "hour"
type = "tail"
path = "{readings}"
format = "text"
start = "beginning"
"""
    return agent_config(workdir, modules=source + WINDOW, name=name,
                        extra=f'\n[cloud]\nurl = "{cloud_url}"\nreconnect_max = "5s"\n')


def held(data_dir: Path) -> tuple[int, int]:
    """The outbox's unsent summaries, and the readings they count."""
    box = Outbox.open_readonly(data_dir)
    try:
        rows = box.read_rows(0, 1 << 30, 1 << 40)
    finally:
        box.close()
    return len(rows), sum(json.loads(row[3])["count"] for row in rows)


def cloud_broker(workdir: Path) -> Broker:
    """A Mosquitto for the cloud's namespace, listening on every address there (not started)."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir)
    text = broker.config.read_text()
    broker.config.write_text(text.replace(f"listener {broker.port} 127.0.0.1", f"listener {broker.port}"))
    return broker

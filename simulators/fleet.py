"""``edge-sim fleet``: many virtual devices in one process, to load a cloud ingest and console.

All devices share one asyncio loop and a few periodic tasks (records, status, keepalive)
instead of a thread or task each, so ten thousand fit in one process. Connections are opened
at ``connect_rate`` per second, never all at once. A schedule cuts and restores links:

    "60:offline=0.1,90:online"   at 60 s a tenth of the devices lose their link (the broker
                                 publishes their Last Will); at 90 s they all come back and
                                 catch up on what piled up meanwhile
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from simulators.fleet_device import DeviceOptions, VirtualDevice
from simulators.schedule import Step, parse_schedule

log = logging.getLogger(__name__)

TICK = 0.2  # how often devices are checked for a due record or status
DRAIN = 5.0  # at the end, how long to wait for the ingest to ack what is still out


@dataclass(frozen=True)
class FleetOptions:
    devices: int = 10
    device: DeviceOptions = field(default_factory=DeviceOptions)
    id_prefix: str = "sim"
    seed: int = 0
    duration: float | None = None  # None: until stopped
    connect_rate: float = 500.0
    schedule: str = ""
    drain: float = DRAIN
    """At the end, how long to wait for every device's backlog to be acknowledged."""

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("--devices must be at least 1")
        if self.connect_rate <= 0:
            raise ValueError("--connect-rate must be > 0")
        for step in self.steps():
            _parse_command(step.command)  # fail now, not an hour into the run

    def steps(self) -> list[Step]:
        return parse_schedule(self.schedule)


@dataclass
class FleetReport:
    devices: int
    connected: int = 0
    produced: int = 0
    acked: int = 0
    backlog: int = 0
    devices_behind: int = 0
    batches: int = 0
    resends: int = 0
    dropped: int = 0
    connects: int = 0
    outages: int = 0
    elapsed_s: float = 0.0
    drain_s: float = 0.0
    """From the end of ``duration`` until every backlog was acknowledged (or ``drain`` ran out)."""


class Fleet:
    """The devices and the tasks that drive them."""

    def __init__(self, options: FleetOptions) -> None:
        self.options = options
        self.devices: list[VirtualDevice] = []
        self._rng = random.Random(f"{options.seed}:fleet")

    async def run(self, stop: asyncio.Event | None = None) -> FleetReport:
        """Run until ``stop`` is set or the duration is over; then drain and say goodbye."""
        _raise_file_limit(self.options.devices)
        loop = asyncio.get_running_loop()
        width = max(5, len(str(self.options.devices - 1)))
        self.devices = [
            VirtualDevice(f"{self.options.id_prefix}-{i:0{width}d}", self.options.device,
                          self.options.seed, loop)
            for i in range(self.options.devices)
        ]
        started = time.monotonic()
        stop = stop or asyncio.Event()
        tasks = [
            asyncio.create_task(self._ramp(self.devices, VirtualDevice.connect), name="connect"),
            asyncio.create_task(self._tick(), name="tick"),
            asyncio.create_task(self._keepalive(), name="keepalive"),
            asyncio.create_task(self._follow_schedule(started), name="schedule"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.options.duration)
        keepalive = tasks.pop(2)  # pings and ack timeouts go on while the backlogs drain
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        drain_started = time.monotonic()
        await self._drain()
        drained_s = time.monotonic() - drain_started
        keepalive.cancel()
        await asyncio.gather(keepalive, return_exceptions=True)
        report = self.report()
        report.elapsed_s = round(time.monotonic() - started, 2)
        report.drain_s = round(drained_s, 2)
        for device in self.devices:
            device.disconnect()
        await asyncio.sleep(0.2)  # let the goodbyes reach the socket
        return report

    def report(self) -> FleetReport:
        report = FleetReport(len(self.devices))
        for device in self.devices:
            counts = device.counts
            report.connected += device.connected
            report.produced += counts.produced
            report.acked += device.acked
            report.backlog += device.backlog
            report.devices_behind += device.backlog > 0
            report.batches += counts.batches
            report.resends += counts.resends
            report.dropped += counts.dropped
            report.connects += counts.connects
            report.outages += counts.outages
        return report

    async def _ramp(self, devices: Iterable[VirtualDevice],
                    action: Callable[[VirtualDevice], None]) -> None:
        """``action`` on each device, at most ``connect_rate`` a second."""
        started = time.monotonic()
        for index, device in enumerate(devices):
            action(device)
            ahead = started + (index + 1) / self.options.connect_rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for device in self.devices:
                if now >= device.next_record_at:
                    device.produce(now)
                    device.flush()
                if device.connected and now >= device.next_status_at:
                    device.publish_status()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for device in self.devices:
                device.client.loop_misc()
                device.check_acks(now)

    async def _follow_schedule(self, started: float) -> None:
        for step in self.options.steps():
            await asyncio.sleep(max(0.0, started + step.at - time.monotonic()))
            share = _parse_command(step.command)
            if share is None:
                cut = [d for d in self.devices if d.cut_off]
                log.info("schedule at %gs: %d devices come back", step.at, len(cut))
                await self._ramp(cut, VirtualDevice.restore)
            else:
                online = [d for d in self.devices if not d.cut_off]
                chosen = self._rng.sample(online, round(share * len(online)))
                log.info("schedule at %gs: %d devices lose their link", step.at, len(chosen))
                for device in chosen:
                    device.cut()

    async def _drain(self) -> None:
        """Wait for the ingest's acks (the keepalive task resends on ``ack_timeout``); a device
        whose broker went down counts too (it reconnects meanwhile), one in a scheduled outage
        does not."""
        for device in self.devices:
            device.flush()
        deadline = time.monotonic() + self.options.drain
        while time.monotonic() < deadline and any(
            d.backlog and not d.cut_off for d in self.devices
        ):
            await asyncio.sleep(0.1)


def _parse_command(command: str) -> float | None:
    """``offline[=SHARE]``: the share of online devices to cut (all by default); ``online``:
    None, bring every cut device back."""
    word, _, value = command.partition("=")
    if word == "online" and not value:
        return None
    if word == "offline":
        try:
            share = float(value) if value else 1.0
        except ValueError:
            share = -1.0
        if 0 < share <= 1:
            return share
        raise ValueError(f"{command!r}: offline takes a share of devices in (0, 1]")
    raise ValueError(f"{command!r}: the fleet schedule knows offline[=SHARE] and online")


def _raise_file_limit(devices: int) -> None:
    """One socket per device: lift the soft limit on open files as far as the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = devices + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        unlimited = hard == resource.RLIM_INFINITY
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if unlimited else min(wanted, hard), hard))
        if not unlimited and hard < wanted:
            log.warning("open files are limited to %d: not every device can connect", hard)

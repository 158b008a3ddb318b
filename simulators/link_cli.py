"""``edge-sim link``: a proxy, its control port and its schedule, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from simulators.link import LinkProxy
from simulators.link_control import ControlServer
from simulators.link_state import LinkState, parse_state
from simulators.schedule import parse_schedule

log = logging.getLogger(__name__)


async def serve_link(listen: tuple[str, int], target: tuple[str, int],
                     control: tuple[str, int] | None, schedule: str) -> None:
    # Parse everything first: a typo in the schedule should fail before anything listens.
    steps = [(step.at, parse_state(step.command)) for step in parse_schedule(schedule)]
    proxy = LinkProxy(listen, target)
    server = ControlServer(proxy, control) if control else None
    await proxy.start()
    if server:
        await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    timer = asyncio.create_task(_run_schedule(proxy, steps))
    try:
        await stopping.wait()
    finally:
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer
        if server:
            await server.stop()
        await proxy.stop()


async def _run_schedule(proxy: LinkProxy, steps: list[tuple[float, LinkState]]) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    for at, state in steps:
        await asyncio.sleep(max(0.0, started + at - loop.time()))
        log.info("schedule at %gs: %s", at, state)
        proxy.set_mode(state)

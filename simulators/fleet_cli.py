"""Running a fleet until its duration ends or SIGINT/SIGTERM arrives."""

from __future__ import annotations

import asyncio
import signal

from simulators.fleet import Fleet, FleetOptions, FleetReport


async def serve_fleet(options: FleetOptions) -> FleetReport:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await Fleet(options).run(stop)

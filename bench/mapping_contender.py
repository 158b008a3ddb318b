"""One agent draining a prefilled broker through a payload format into ``window`` and the
outbox, in a process of its own (pinned to a core); prints {"rate": readings/s}.

    python -m bench.mapping_contender zigbee2mqtt --port P --readings N --workdir D [--cpu 1]
    python -m bench.mapping_contender zigbee2mqtt --port P --readings 0 --workdir D --subscribe-only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path

from agent.topics import fixed_prefix
from bench.mapping_payloads import KINDS


def agent_config(workdir: Path, port: int, kind: str) -> Path:
    spec = KINDS[kind]
    path = workdir / f"agent-{kind}.toml"
    path.write_text(textwrap.dedent(f"""
        device_id = "bench"
        data_dir = "{workdir / f'data-{kind}'}"
        log_level = "WARNING"
        [[sources]]
        name = "local"
        type = "mqtt"
        url = "mqtt://127.0.0.1:{port}"
        topics = ["{spec.topics}"]
        qos = 1
        client_id = "bench-map-{kind}"
        format = "{spec.format}"
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["{fixed_prefix(spec.topics)}#"]
        sync = true
        [modules.with]
        every = "1s"
        stats = ["count", "mean", "min", "max"]
    """))
    return path


def run_agent(port: int, kind: str, readings: int, workdir: Path, subscribe: bool) -> dict[str, float]:
    from agent.config import load_config
    from agent.supervisor import Agent

    agent = Agent(load_config(agent_config(workdir, port, kind)))
    result: dict[str, float] = {}

    async def watch() -> None:
        totals = agent.counters.totals
        while not totals.get(("source:local", "accepted")):
            await asyncio.sleep(0.0005)
        first, cpu = time.perf_counter(), time.process_time()
        while totals.get(("module:win", "processed"), 0) < readings:
            await asyncio.sleep(0.002)
        result["rate"] = readings / (time.perf_counter() - first)
        # CPU seconds of this process (all its threads): what one core would take on a quiet
        # machine, whatever else the machine runs meanwhile.
        result["cpu_rate"] = readings / (time.process_time() - cpu)

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(agent.run(on_ready=ready.set))
        if subscribe:
            await ready.wait()
        else:
            await watch()
        agent.request_stop()
        await task

    asyncio.run(main())
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--readings", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--subscribe-only", action="store_true")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    out = run_agent(args.port, args.kind, args.readings, args.workdir, args.subscribe_only)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

"""``edge-agent sync``: run the uploader alone, for scripts, tests and a daemon that is not running.

``--once`` drains what is in the outbox now (up to its newest seq when the command starts) and
exits 0 when the cloud's ack covers it, or 1 when ``--timeout`` passes first.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from agent import __version__
from agent.cli.daemon import load_or_exit, setup_logging
from agent.cli.main import CONFIG_OPTION
from agent.config import AgentConfig, CloudConfig
from agent.counters import CounterSet
from agent.errors import OutboxError
from agent.health.status import read_status
from agent.outbox import Changes, Outbox

log = logging.getLogger("agent.sync")


@click.command("sync")
@CONFIG_OPTION
@click.option("--once", is_flag=True, help="Drain what is waiting now, then exit.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=120.0,
    show_default=True,
    help="With --once: give up (exit 1) after this many seconds.",
)
def sync(config_path: Path, once: bool, timeout: float) -> None:
    """Sync the outbox to the cloud without the daemon (it must not be running)."""
    loaded = load_or_exit(config_path)
    config = loaded.agent
    if config.cloud is None:
        click.echo(f"{config_path}: cloud: required for sync (add a [cloud] section)", err=True)
        sys.exit(2)
    setup_logging(config.log_level)
    _refuse_if_daemon_runs(config)
    try:
        code = asyncio.run(_sync(config, config.cloud, once, timeout))
    except OutboxError as exc:
        click.echo(str(exc), err=True)
        code = 1
    sys.exit(code)


def _refuse_if_daemon_runs(config: AgentConfig) -> None:
    try:
        daemon = read_status(config.data_dir)["daemon"]
    except OutboxError:
        return
    if daemon["running"]:
        click.echo(
            f"the agent (pid {daemon['pid']}) is running and syncs by itself; "
            "`edge-agent sync` is for when it is not",
            err=True,
        )
        sys.exit(1)


async def _sync(config: AgentConfig, cloud: CloudConfig, once: bool, timeout: float) -> int:
    from cloud_sync.uploader.uploader import Uploader

    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-agent-outbox")

    async def write(fn: Any, *args: Any) -> Any:
        return await loop.run_in_executor(executor, fn, *args)

    outbox = await write(Outbox.open, config.data_dir, config.buffer.max_bytes)
    counters = CounterSet()
    uploader = Uploader(cloud, config.device_id, config.data_dir, write, outbox, counters, __version__)
    target = await write(outbox.last_seq)
    started = time.monotonic()
    running = asyncio.create_task(uploader.run(), name="uploader")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, uploader.stop)
    code = 0
    try:
        if once:
            code = await _drain(uploader, running, target, timeout, started)
        else:
            await running
    finally:
        uploader.stop()
        await asyncio.wait({running}, timeout=5.0)
        running.cancel()
        await write(outbox.commit, Changes(counters=counters.take()))
        await write(outbox.close)
        executor.shutdown(wait=True)
    return code


async def _drain(
    uploader: Any, running: asyncio.Task[None], target: int, timeout: float, started: float
) -> int:
    drained = asyncio.ensure_future(uploader.drained(target))
    await asyncio.wait({drained, running}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    elapsed = time.monotonic() - started
    if drained.done():
        click.echo(f"synced: the cloud has everything up to seq {target} ({elapsed:.1f} s)")
        return 0
    drained.cancel()
    click.echo(
        f"not synced after {elapsed:.0f} s: the cloud acknowledged up to seq {uploader.tracker.acked} "
        f"of {target}; connected: {'yes' if uploader.connected else 'no'}"
        + (f"; last error: {uploader.last_error}" if uploader.last_error else "")
        + ("" if not uploader.connected else "; is the cloud ingest (edge-cloud serve) running?"),
        err=True,
    )
    return 1

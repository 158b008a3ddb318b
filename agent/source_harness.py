"""Running a source in a test: the real runner (restarts, backoff, counters) and a real bus, with
what the source published recorded.

    from agent.source_harness import run_source

    run = run_source(MySource, {"path": str(tmp_path / "x")}, until=lambda run: len(run.records) >= 3)
    assert [r.data["value"] for r in run.records] == [1.0, 2.0, 3.0]
    assert run.counters["dropped.value_not_a_number"] == 1
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.api import Record, Source
from agent.bus import Bus, RecordQueue
from agent.counters import CounterSet
from agent.registry import resolve_source
from agent.runtime.source_runner import SourceRunner


@dataclass
class SourceRun:
    """What a source did in ``run_source``."""

    records: list[Record] = field(default_factory=list, repr=False)
    counters: dict[str, int] = field(default_factory=dict)
    """The source's own counters: ``received``, ``accepted``, ``dropped.<reason>``, ``errors.<reason>``..."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Drops by reason, as ``edge-agent status`` shows them."""
    health: dict[str, Any] = field(default_factory=dict)


def run_source(
    source: str | type[Source[Any]],
    config: dict[str, Any],
    until: Callable[[SourceRun], bool] | None = None,
    timeout: float = 5.0,
    name: str = "test",
    queue: int = 1_000_000,
    base_dir: Path | None = None,
    consume: bool = True,
) -> SourceRun:
    """Run ``source`` (a class or a registered type) with ``config`` (its ``[[sources]]`` entry
    without ``type`` and ``name``) until ``until(run)`` holds or ``timeout`` seconds pass.
    With ``consume=False`` nothing takes records off the bus until the end, so that a small
    ``queue`` fills up (to test how the source behaves under backpressure)."""
    return asyncio.run(
        run_source_async(source, config, until, timeout, name, queue, base_dir, consume)
    )


async def run_source_async(
    source: str | type[Source[Any]],
    config: dict[str, Any],
    until: Callable[[SourceRun], bool] | None = None,
    timeout: float = 5.0,
    name: str = "test",
    queue: int = 1_000_000,
    base_dir: Path | None = None,
    consume: bool = True,
) -> SourceRun:
    """``run_source`` inside a running event loop."""
    cls = resolve_source(source, base_dir) if isinstance(source, str) else source
    kind = source if isinstance(source, str) else "test"
    settings = cls.Config.model_validate({"type": kind, "name": name, **config})
    bus, counters = Bus(), CounterSet()
    inbox = RecordQueue(queue)
    bus.subscribe(["#"], inbox)
    runner = SourceRunner(cls, settings, "test-device", bus, counters)
    run = SourceRun()
    task = asyncio.create_task(runner.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline and not task.done():
            await asyncio.sleep(0.01)
            _collect(run, inbox if consume else None, counters, runner, name)
            if until is not None and until(run):
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        _collect(run, inbox, counters, runner, name)
    return run


def _collect(
    run: SourceRun, inbox: RecordQueue | None, counters: CounterSet, runner: SourceRunner, name: str
) -> None:
    while inbox is not None and (batch := inbox.get_nowait()) is not None:
        run.records.extend(batch)
    scope = f"source:{name}"
    run.counters = {key: n for (where, key), n in counters.totals.items() if where == scope}
    run.dropped = {key: n for (where, key), n in counters.totals.items() if where == "dropped"}
    run.health = runner.health()


__all__ = ["SourceRun", "run_source", "run_source_async"]

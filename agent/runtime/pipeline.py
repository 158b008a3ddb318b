"""The sources and module runners of a config, wired through one bus, and changed in place.

``apply`` moves the pipeline from the config it runs to another one: a source or module whose
settings did not change keeps running untouched (its open windows, its broker session); one
that changed or went away is stopped, flushing what it holds; new ones are started. Module
inputs are switched from the old queue to the new one in a single step of the event loop, so no
record is lost or seen twice across the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.api import Record, SourceConfig
from agent.bus import Bus
from agent.config import LoadedConfig, ModulePlan, SupervisorConfig, source_class
from agent.counters import CounterSet
from agent.outbox.checkpoint import Checkpoint, QueuedRecord
from agent.outbox.committer import Committer
from agent.outbox.records import Changes
from agent.runtime.loopwatch import LoopWatch
from agent.runtime.module_runner import ModuleRunner
from agent.runtime.process_runner import ProcessRunner
from agent.runtime.source_runner import SourceRunner
from agent.topics import matches
from agent.wiring import streams

log = logging.getLogger(__name__)

OWED = "~source:"  # checkpoint entries of a source: the packet ids its last cut covered...
RETAINED = "retained:"  # ...and, under this prefix, each topic's last message taken (its CRC)
TAKEN = "taken"  # ...and the count of readings taken that the broker will not give again (QoS 0)
PLACE = "place"  # ...and where a source that can read its input again goes on from (tail)
READY_WAIT = 2.0  # ready once every source has connected or failed once, or after this
STOP_BUDGET = 8.0  # modules' flush at stop, when no supervisor config says otherwise
RESERVE = 0.25  # seconds kept for each module still to flush while one finishes


@dataclass
class Change:
    """What an ``apply`` did, by name."""

    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """Modules of the new config whose start failed."""
    errors: dict[str, str | None] = field(default_factory=dict)
    """Why each failed module failed."""

    def __str__(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in vars(self).items()
                 if names and what != "errors"]
        return "; ".join(parts) or "nothing changed"


@dataclass
class _Running:
    source: SourceRunner
    config: SourceConfig
    task: asyncio.Task[None]


class Pipeline:
    def __init__(
        self,
        committer: Committer | None,
        counters: CounterSet,
        watch: LoopWatch,
        saved_state: dict[str, dict[str, Any]],
        saved_checkpoint: tuple[dict[str, dict[str, Any]], dict[str, list[QueuedRecord]]] = ({}, {}),
    ) -> None:
        self.bus = Bus()
        self.loaded: LoadedConfig | None = None
        self.runners: list[ModuleRunner] = []  # upstream first
        self._sources: dict[str, _Running] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._committer = committer
        self._counters = counters
        self._watch = watch
        self._saved_state = saved_state
        self._supervisor: SupervisorConfig | None = None
        self._restore, self._requeue = saved_checkpoint  # used by the first apply only
        self._queues_saved = True  # whether the last checkpoint saved any queued reading
        self._owed_saved: dict[str, bool] = {}
        self._places: dict[str, Any] = {}  # of the sources stopped, by name

    @property
    def sources(self) -> list[SourceRunner]:
        return [running.source for running in self._sources.values()]

    async def apply(self, loaded: LoadedConfig, group: asyncio.TaskGroup) -> Change:
        """Run ``loaded`` from now on, changing only what differs from the running config."""
        config = loaded.agent
        change = Change()
        new_sources = {source.name: source for source in config.sources}
        new_plans = {plan.spec.name: plan for plan in loaded.modules}
        supervisor_changed = self._supervisor is not None and self._supervisor != config.supervisor
        # sources and modules take the skew when they start (a mapper, a window compile it in)
        skew_changed = self.loaded is not None and self.loaded.agent.max_clock_skew != config.max_clock_skew
        old_runners = {runner.name: runner for runner in self.runners}
        replaced = {
            name: runner for name, runner in old_runners.items()
            if supervisor_changed or skew_changed or new_plans.get(name) != runner.plan
        }

        going = [n for n, r in self._sources.items() if skew_changed or new_sources.get(n) != r.config]
        memories = {name: self._sources[name].source.context.retained for name in going}
        await self._stop_sources(going)
        for name in going:
            (change.restarted if name in new_sources else change.stopped).append(name)
            if name not in new_sources and self._committer is not None:
                self._committer.reset_checkpoint(f"{OWED}{name}")

        fresh = {
            name: runner_for(plan)(
                plan, self.bus, self._committer, self._counters, self._watch, config.supervisor,
                state=old_runners[name].context.state if name in old_runners
                else self._saved_state.get(name, {}),
            )
            for name, plan in new_plans.items() if name not in old_runners or name in replaced
        }
        for runner in fresh.values():
            runner.context.max_clock_skew = config.max_clock_skew
        for runner in replaced.values():  # one step of the loop: no record lost or doubled
            self.bus.unsubscribe(runner.queue)
        for runner in fresh.values():
            self.bus.subscribe(runner.plan.spec.filters, runner.queue)
        await self._finish([runner for runner in self.runners if runner.name in replaced])

        self._supervisor = config.supervisor
        kept = {name: runner for name, runner in old_runners.items() if name not in replaced}
        self.runners = [
            kept.get(plan.spec.name) or fresh[plan.spec.name] for plan in upstream_first(loaded.modules)
        ]
        self._requeue_saved(fresh)
        for runner in reversed(self.runners):  # downstream first
            if runner.name in fresh:
                if not await runner.start(self._restore.pop(runner.name, None)):
                    change.failed.append(runner.name)
                    change.errors[runner.name] = runner.last_error
                self._tasks[runner.name] = group.create_task(runner.run(), name=f"module:{runner.name}")
        for name in old_runners:
            if name not in new_plans:
                change.stopped.append(name)
            elif name in replaced:
                change.restarted.append(name)
            else:
                change.kept.append(name)
        change.started += [name for name in new_plans if name not in old_runners]

        for name, source_config in new_sources.items():
            if name in self._sources:
                change.kept.append(name)
                continue
            cls = source_class(source_config)
            source = SourceRunner(
                cls, source_config, config.device_id, self.bus, self._counters,
                data_dir=config.data_dir / "sources", max_clock_skew=config.max_clock_skew,
            )
            saved = self._restore.pop(f"{OWED}{name}", {})
            source.owed_restore = list(saved.get("acked", []))
            if name in memories:  # restarted with new settings: what it took stays taken
                source.context.retained = memories[name]
            source.context.retained.restore(
                {key[len(RETAINED):]: crc for key, crc in saved.items() if key.startswith(RETAINED)}
            )
            if TAKEN in saved:
                self._count_lost_at_crash(source, int(saved[TAKEN]))
            source.resume = saved[PLACE] if PLACE in saved else self._places.pop(name, None)
            task = group.create_task(source.run(), name=f"source:{name}")
            self._sources[name] = _Running(source, source_config, task)
            if name not in change.restarted:
                change.started.append(name)
        self.loaded = loaded
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_WAIT):
                for running in self._sources.values():
                    await running.source.attempted.wait()
        return change

    async def restart(self, name: str, group: asyncio.TaskGroup) -> str | None:
        """Restart one module in place: the old instance drains its queue and flushes, a new one
        (keeping the state) takes its inputs over in one loop step. Its status, or None if no
        module is called ``name``."""
        old = next((runner for runner in self.runners if runner.name == name), None)
        if old is None or self._supervisor is None:
            return None
        fresh = runner_for(old.plan)(
            old.plan, self.bus, self._committer, self._counters, self._watch, self._supervisor,
            state=old.context.state,
        )
        fresh.context.max_clock_skew = old.context.max_clock_skew
        self.bus.unsubscribe(old.queue)
        self.bus.subscribe(old.plan.spec.filters, fresh.queue)
        await self._finish([old])
        self.runners = [fresh if runner is old else runner for runner in self.runners]
        await fresh.start()
        self._tasks[name] = group.create_task(fresh.run(), name=f"module:{name}")
        return fresh.status

    async def stop(self, budget: float | None = None) -> None:
        """Stop every source, then let every module drain its queue and flush, upstream first,
        within ``budget`` seconds (the supervisor's ``stop_timeout`` by default)."""
        await self._stop_sources(list(self._sources))
        await self._finish(self.runners, budget)
        # the runners stay listed, stopped: the final commit saves their state and health

    def checkpoint(self, changes: Changes) -> None:
        """Add the modules' checkpoint to a commit, and the sources' acknowledgements it covers:
        one point between two steps of the loop, so every reading read so far is in it."""
        checkpoint = changes.checkpoint or Checkpoint()
        checkpoint.queued = {}
        for runner in self.runners:
            runner.checkpoint_into(checkpoint)
        for name, running in self._sources.items():
            release = running.source.cut()
            if release is not None:
                checkpoint.released.append(release)
            taken = running.source.retained_cut()
            if taken:  # in the same commit as the effect of those messages, never before it
                checkpoint.add(f"{OWED}{name}", {f"{RETAINED}{topic}": crc for topic, crc in taken.items()})
            count = running.source.taken_cut()
            if count is not None:
                checkpoint.add(f"{OWED}{name}", {TAKEN: count})
            place = running.source.place()
            if place is not None:  # where a source that can read again resumes after a crash
                checkpoint.add(f"{OWED}{name}", {PLACE: place})
            ids = running.source.owed_ids()
            if ids is not None and (ids or self._owed_saved.get(name)):
                # a crash between this commit and its PUBACKs: the resends are not taken twice
                checkpoint.add(f"{OWED}{name}", {"acked": ids})
                self._owed_saved[name] = bool(ids)
        if not checkpoint.queued and not self._queues_saved:
            checkpoint.queued = None  # empty, as saved last time: no write for an idle agent
        else:
            self._queues_saved = bool(checkpoint.queued)
        if checkpoint.modules or checkpoint.resets or checkpoint.released or checkpoint.queued is not None:
            changes.checkpoint = checkpoint

    def _count_lost_at_crash(self, source: SourceRunner, checkpointed: int) -> None:
        """Readings the last run took after its last checkpoint and that no broker will deliver
        again (QoS 0): lost with its crash, counted in the commit that saves the new count."""
        lost = source.context.taken.lost_since(checkpointed)
        if lost:
            self._counters.incr("dropped", "lost_at_crash:qos0_since_checkpoint", lost)
            log.warning("source %r: %d readings taken after the last checkpoint before a crash "
                        "are lost (QoS 0: the broker does not send them again)", source.name, lost)

    async def _stop_sources(self, names: list[str]) -> None:
        """Stop reading, commit a checkpoint (which acknowledges what was read), disconnect."""
        if not names:
            return
        for name in names:
            self._sources[name].source.pause()
        if self._committer is not None:
            await self._committer.commit()
        for name in names:
            running = self._sources.pop(name)
            running.task.cancel()  # the runner awaits the source's own stop
            await asyncio.gather(running.task, return_exceptions=True)
            self._places[name] = running.source.resume  # a restart with a new config goes on

    def _requeue_saved(self, fresh: dict[str, ModuleRunner]) -> None:
        """The readings that were queued for each module at the last checkpoint before a crash."""
        for name, records in list(self._requeue.items()):
            runner = fresh.get(name)
            if runner is None:
                self._counters.incr("dropped", "lost_at_crash:module_removed", len(records))
                log.warning("%d readings queued for module %r before a crash are lost: it is "
                            "not in the config any more", len(records), name)
            else:
                runner.queue.requeue([Record(*record) for record in records])
        self._requeue = {}
        for name in list(self._restore):
            if name not in fresh and not name.startswith(OWED):
                self._restore.pop(name)

    async def _finish(self, runners: Iterable[ModuleRunner], budget: float | None = None) -> None:
        runners = list(runners)
        if budget is None:
            budget = self._supervisor.stop_timeout if self._supervisor else STOP_BUDGET
        deadline = time.monotonic() + budget
        tasks = [self._tasks.pop(runner.name) for runner in runners if runner.name in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for index, runner in enumerate(runners):  # upstream first: flushed output goes down
            # a blocked module must leave the ones after it a little time to flush
            await runner.finish(deadline - RESERVE * (len(runners) - 1 - index))


def runner_for(plan: ModulePlan) -> type[ModuleRunner]:
    """In the daemon's process (the default), or in a child process of its own."""
    return ProcessRunner if plan.spec.isolation == "process" else ModuleRunner


def upstream_first(plans: list[ModulePlan]) -> list[ModulePlan]:
    """Order modules so that one feeding another comes before it (config order otherwise)."""
    ordered: list[ModulePlan] = []
    remaining = list(plans)
    while remaining:
        for plan in remaining:
            feeders = [
                other for other in remaining
                if other is not plan and any(
                    matches(f, stream) for f in plan.spec.filters
                    for stream in streams(other.spec.name, other.cls.outputs)
                )
            ]
            if not feeders:
                break
        else:
            plan = remaining[0]  # a cycle: keep config order for the rest
        ordered.append(plan)
        remaining.remove(plan)
    return ordered

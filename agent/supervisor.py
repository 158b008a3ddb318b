"""The supervisor: builds the pipeline from a config, runs it, reloads it, and shuts it down.

Start-up goes downstream first (outbox, committer, modules, then sources) so nothing is read
before there is somewhere to put it; shutdown goes upstream first (sources stop, modules drain
their queues and flush what is open, the outbox commits last). Every long-lived task lives in
one ``asyncio.TaskGroup`` under a name, so a crash in the log says whose it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import LoadedConfig, load_config
from agent.counters import CounterSet
from agent.errors import ConfigError
from agent.health import sdnotify
from agent.health.clock import CLOCK
from agent.health.livefile import LiveHealth
from agent.outbox import Changes
from agent.outbox.committer import Committer
from agent.runtime.loopwatch import LoopWatch
from agent.runtime.pipeline import Change, Pipeline
from agent.tasks import supervised

if TYPE_CHECKING:  # loaded only when configured (a device without [cloud] never imports sync)
    from agent.remote.link import Remote
    from cloud_sync.uploader.uploader import Uploader

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 2.0
STATE_INTERVAL = 5.0


class Agent:
    """The daemon: ``await Agent(load_config(path)).run()`` until SIGTERM or SIGINT."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.counters = CounterSet()
        self.watch = LoopWatch(loaded.agent.supervisor.hang_timeout)
        self.committer: Committer | None = None
        self.live: LiveHealth | None = None  # health written in place (agent/health/livefile.py)
        self.saved_state: dict[str, dict[str, Any]] = {}
        self.pipeline: Pipeline | None = None
        self.started_at = time.time()
        self._stopping = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._last_state_save = 0.0
        self._last_health = 0.0
        self._group: asyncio.TaskGroup | None = None
        self._committer_task: asyncio.Task[None] | None = None
        self.uploader: Uploader | None = None
        self._uploader_task: asyncio.Task[None] | None = None
        self.file_loaded = loaded
        """The operator's file, as last read (``loaded`` may be a remote config instead)."""
        self.remote: Remote | None = None
        self.apply_lock = asyncio.Lock()
        """Held while a config is applied (and, for a remote one, on trial)."""
        self._pipeline_lock = asyncio.Lock()  # one change of the pipeline at a time
        self.warnings: list[str] = []

    def request_stop(self) -> None:
        self._stopping.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def run(self, on_ready: Callable[[], None] | None = None) -> None:
        config = self.loaded.agent
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        self.committer = committer = await Committer.open(config.data_dir, config.buffer, self.counters)
        self.live = LiveHealth(config.data_dir)
        self.saved_state = await committer.call(committer.outbox.module_states)
        saved_checkpoint = await committer.call(committer.outbox.checkpoint)
        self._note_crash(await committer.call(committer.outbox.health))
        committer.on_commit(self._snapshot)
        committer.on_commit(self._sync_snapshot)
        await self._start_remote()
        metrics = None
        if config.metrics is not None:
            from agent.health.metrics import MetricsServer  # only an agent that serves metrics loads it

            metrics = MetricsServer(config.data_dir, config.metrics.host, config.metrics.port)
            await metrics.start()
        self.watch.start()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._committer_task = group.create_task(
                    supervised("committer", committer.run, self.counters), name="committer"
                )
                await self._start_sync(group)
                self.pipeline = Pipeline(
                    committer, self.counters, self.watch, self.saved_state, saved_checkpoint
                )
                await self.pipeline.apply(self.loaded, group)
                self._ready(on_ready)
                await self._serve()
                await self._shutdown()
        finally:
            if metrics is not None:
                await metrics.stop()
            self.watch.stop()
            self._remove_signals(loop)

    def _ready(self, on_ready: Callable[[], None] | None) -> None:
        assert self.pipeline is not None
        log.info(
            "edge-agent %s ready: device %s, %d sources, %d modules, outbox %s",
            __version__, self.loaded.agent.device_id, len(self.pipeline.sources),
            len(self.pipeline.runners), self.loaded.agent.data_dir,
        )
        sdnotify.notify(f"READY=1\nSTATUS=running {len(self.pipeline.runners)} modules")
        _release_startup_memory()
        if on_ready:
            on_ready()

    async def _serve(self) -> None:
        while not self._stopping.is_set():
            stop = asyncio.ensure_future(self._stopping.wait())
            reload = asyncio.ensure_future(self._reload_requested.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._reload_requested.is_set() and not self._stopping.is_set():
                self._reload_requested.clear()
                await self._reload()

    async def _shutdown(self) -> None:
        budget = self.loaded.agent.supervisor.stop_timeout
        log.info("stopping: sources first, then modules flush, then the outbox commits")
        sdnotify.notify("STOPPING=1")
        assert self.pipeline is not None and self.committer is not None
        if self.remote is not None:
            await self.remote.stop()
        try:
            async with asyncio.timeout(budget * 0.8):  # a backstop: the pipeline keeps to 0.7
                await self.pipeline.stop(budget * 0.7)
        except TimeoutError:
            log.error("modules did not finish flushing within %.1f s; committing what there is", budget)
        await self._stop_sync(budget * 0.15)
        self.committer.stop()
        if self._committer_task:
            await self._committer_task
        self._last_health = self._last_state_save = 0.0  # the final commit carries both
        await self.committer.close()
        if self.live is not None:
            self.live.write({**self.health(), "at": time.time()})
            self.live.close()
        log.info("stopped; outbox committed")

    async def _start_sync(self, group: asyncio.TaskGroup) -> None:
        """Start the uploader when ``[cloud]`` is configured (downstream of the outbox)."""
        cloud = self.loaded.agent.cloud
        if cloud is None or self.committer is None:
            return
        from cloud_sync.uploader.uploader import Uploader  # only a device that syncs loads it

        self.uploader = Uploader(
            cloud, self.loaded.agent.device_id, self.loaded.agent.data_dir, self.committer.call,
            self.committer.outbox, self.counters, __version__,
        )
        self.uploader.remote = self.remote
        self._uploader_task = group.create_task(self.uploader.run(), name="uploader")

    async def _stop_sync(self, budget: float) -> None:
        """Say goodbye to the cloud broker within ``budget`` seconds; unsent records stay."""
        if self.uploader is None or self._uploader_task is None:
            return
        self.uploader.stop()
        try:
            async with asyncio.timeout(budget):
                await asyncio.shield(self._uploader_task)
        except TimeoutError:
            log.warning("the uploader did not stop within %.1f s; cancelling it", budget)
            self._uploader_task.cancel()
            await asyncio.gather(self._uploader_task, return_exceptions=True)

    async def _reload(self) -> None:
        log.info("reloading %s", self.loaded.path)
        try:
            new = await asyncio.to_thread(load_config, self.loaded.path)
        except ConfigError as exc:
            log.error("the new config is refused; keeping the running one:\n%s", exc)
            return
        old = self.loaded.agent
        if (new.agent.device_id, new.agent.data_dir) != (old.device_id, old.data_dir):
            log.error("device_id and data_dir cannot change on reload; restart the agent instead")
            return
        async with self.apply_lock:
            self.file_loaded = new
            if self.remote is not None and self.remote.config is not None:
                new = await asyncio.to_thread(self.remote.config.reloaded, new)
            await self.apply(new)

    async def apply(self, new: LoadedConfig) -> Change:
        """Run ``new`` in place of the running config, changing only what differs; if a module
        of it cannot start, go back to the running config. A changed ``[cloud]`` restarts the
        uploader (unsent records stay in the outbox)."""
        assert self.pipeline is not None and self._group is not None
        async with self._pipeline_lock:
            change = await self._apply(new)
        sdnotify.notify("READY=1")
        return change

    async def _apply(self, new: LoadedConfig) -> Change:
        assert self.pipeline is not None and self._group is not None
        sdnotify.notify("RELOADING=1")
        change = await self.pipeline.apply(new, self._group)
        if change.failed:
            log.error("modules %s failed to start; back to the running config", ", ".join(change.failed))
            await self.pipeline.apply(self.loaded, self._group)
        else:
            if new.agent.log_level != self.loaded.agent.log_level:
                logging.getLogger().setLevel(new.agent.log_level)
            if new.agent.cloud != self.loaded.agent.cloud:
                await self._stop_sync(self.loaded.agent.supervisor.stop_timeout * 0.15)
                self.uploader = self._uploader_task = None
                self.loaded = new
                await self._start_sync(self._group)
                change.restarted.append("cloud")
            self.loaded = new
            log.info("reloaded: %s", change)
        return change

    async def restart_module(self, name: str) -> str | None:
        """Stop module ``name`` (it flushes) and start it afresh with its state; its new status,
        or None if no module has that name."""
        assert self.pipeline is not None and self._group is not None
        async with self._pipeline_lock:
            return await self.pipeline.restart(name, self._group)

    async def _start_remote(self) -> None:
        """``[remote]``: warn about loose secret files, and start from the persisted remote
        config where there is one (agent/remote/config.py says when)."""
        from agent.secret_files import check_secret_files

        self.warnings = check_secret_files(self.loaded.agent)
        for warning in self.warnings:
            log.warning("%s", warning)
        settings = self.loaded.agent.remote
        if settings is None:
            return
        from agent.remote.link import Remote  # only a device under remote control loads it

        self.remote = Remote(self, settings)
        if self.remote.config is not None:
            self.loaded = await self.remote.config.startup(self.loaded)

    def _note_crash(self, health: dict[str, tuple[dict[str, Any], float]]) -> None:
        """Say so after a run that did not stop cleanly. What it held comes back from its last
        checkpoint, and QoS 1 readings from the broker; what cannot (QoS 0 readings taken since
        that checkpoint) each source counts as it starts (``Pipeline``)."""
        last, _ = health.get("agent", ({}, 0.0))
        if last.get("running"):
            log.warning("the last run (pid %s) did not stop cleanly; it is restored from its last "
                        "checkpoint", last.get("pid"))

    def _sync_snapshot(self, changes: Changes) -> None:
        if self.uploader is not None:
            self.uploader.on_commit(changes)

    def _snapshot(self, changes: Changes) -> None:
        """Add module state and health to a commit, each at its own pace."""
        now = time.monotonic()
        if CLOCK.check():
            self.counters.incr("clock", "steps")
        pipeline = self.pipeline
        if pipeline is None:
            return
        pipeline.checkpoint(changes)
        if now - self._last_state_save >= STATE_INTERVAL:
            self._last_state_save = now
            for runner in pipeline.runners:
                if runner.context.state:
                    changes.module_state[runner.name] = dict(runner.context.state)
        if now - self._last_health >= HEALTH_INTERVAL:
            self._last_health = now
            changes.health["agent"] = health = self.health()
            if self.live is not None:  # whether this commit works or not
                self.live.write({**health, "at": time.time()})
            for runner in pipeline.runners:
                changes.health[f"module:{runner.name}"] = runner.health()
            sdnotify.notify("WATCHDOG=1")

    def health(self) -> dict[str, Any]:
        assert self.pipeline is not None and self.committer is not None
        return {
            "pid": os.getpid(),
            "version": __version__,
            "device_id": self.loaded.agent.device_id,
            "started_at": self.started_at,
            "running": not self._stopping.is_set(),
            "pending_commit": self.committer.pending,
            "outbox_error": self.committer.last_error,
            "commit_failing_since": self.committer.failing_since,
            "disk_full": self.committer.disk_full,
            # buffer.min_free: since when new records are refused for want of free space
            "disk_low_since": self.committer.outbox.margin.low_since,
            "disk_free": self.committer.outbox.margin.free,
            "warnings": self.warnings,
            "clock": CLOCK.summary(),
            "remote": self.remote.summary() if self.remote is not None else None,
            "sources": {source.name: source.health() for source in self.pipeline.sources},
        }

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def _release_startup_memory() -> None:
    """Hand the garbage of start-up (imports, config validation) back to the system: the daemon
    then idles at about half a megabyte less, for the months it runs."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc; musl has no such call and says so

"""Runs a module with ``isolation = "process"``: its instance lives in a child process
(``runtime.child``) and this runner stands where a ``ModuleRunner`` would, with the same queue,
bus, outbox, counters and state.

A batch sent to the child is in flight until its reply comes. If the child dies (a segfault,
``os.abort()``, an exception that kills the interpreter), holds a step past ``hang_timeout``, or
grows past ``max_rss``, it is killed, counted (``crashes``, ``hangs``, ``rss_kills``), and a
new child is started with the same capped backoff as any restart. The records in flight are
retried once, one a request; one that ends a child on its own is quarantined with the reason.
Records waiting in the queue meanwhile stay queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from agent.api import Record
from agent.outbox import Quarantined
from agent.outbox.checkpoint import Checkpoint
from agent.runtime.child import frame, read_frame, records_of
from agent.runtime.instance import START_TIMEOUT
from agent.runtime.module_runner import ModuleRunner

BATCH_RECORDS = 4096
"""Records sent to the child in one request: big enough that the pipe costs little per record."""
HANG_SHARE = 0.2
WATCH_EVERY = 0.2
"""Seconds between looks at a child that has not answered yet (its memory, the hang deadline)."""
RSS_EVERY = 0.25


class ChildDied(Exception):
    """Why records were set aside: the module's process ended or was ended."""


class ProcessRunner(ModuleRunner):
    """A ``ModuleRunner`` whose module runs in a child process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        supervisor = args[4] if len(args) > 4 else kwargs["supervisor"]
        self._hang_timeout: float = supervisor.hang_timeout
        self._max_rss = self.plan.spec.max_rss
        self._proc: asyncio.subprocess.Process | None = None
        self._status = "created"
        self._last_error: str | None = None
        self._in_flight: list[Record] = []
        self._saved: dict[str, Any] = {}  # checkpoint items not yet in a commit
        self._timer_at = math.inf
        self._rss = 0
        self._rss_at = 0.0
        self._next_spawn = 0.0
        self._errors_row = 0
        self._chunk = 1  # records a request carries (the first measures the module)
        self._cost = 0.0  # seconds a record took in the last request
        self._suspects = 0  # records of a batch a child died with, retried one by one
        self._stopping = False
        self._owed: asyncio.Future[Any] | None = None  # a reply the run loop stopped waiting for

    @property
    def status(self) -> str:
        return self._status

    @property
    def last_error(self) -> str | None:
        return self._last_error

    # -- the child -------------------------------------------------------------------------

    async def start(self, saved: Mapping[str, Any] | None = None, timeout: float = START_TIMEOUT) -> bool:
        cls = self.plan.cls
        module = sys.modules.get(cls.__module__)
        hello = {
            "module": cls.__module__, "qualname": cls.__qualname__,
            "file": getattr(module, "__file__", None), "name": self.name,
            "with": self.plan.spec.with_ or self.plan.config.model_dump(mode="json", by_alias=True),
            "named": self.plan.spec.named_inputs, "state": dict(self.context.state),
            "saved": dict(saved) if saved and self.checkpoints else None,
            "max_clock_skew": self.context.max_clock_skew,
        }
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.runtime.child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 30,
        )
        self._reset_checkpoint()
        try:
            await self._call(hello, [], timeout)
        except ChildDied as exc:
            self._status, self._last_error = "failed", f"start: {exc}"
        return self._status == "running"

    async def _call(self, message: Any, records: list[Record], timeout: float) -> None:
        """Send one request and apply its reply; ``ChildDied`` (counted, the records quarantined,
        the child killed) if the child dies, hangs or grows too big meanwhile."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            raise ChildDied("the module's process is not running")
        assert proc.stdin is not None and proc.stdout is not None
        self._in_flight = records
        reading = asyncio.ensure_future(read_frame(proc.stdout))
        with contextlib.suppress(ConnectionError):  # a dead child shows as EOF below
            proc.stdin.write(frame(message))
        await self._answer(reading, timeout)

    async def _answer(self, reading: asyncio.Future[Any], timeout: float) -> None:
        """Wait for the reply being read, watching the child meanwhile, and apply it. Cancelled
        (the agent stops), the reply stays owed: ``finish`` waits for it first."""
        proc = self._proc
        assert proc is not None
        try:
            deadline = time.monotonic() + timeout
            while True:
                done, _ = await asyncio.wait({reading}, timeout=WATCH_EVERY)
                if done:
                    break
                self._check_rss(force=True)
                if time.monotonic() > deadline:
                    raise self._died("hangs", f"no answer within {timeout:.1f} s: killed")
            try:
                reply = reading.result()
            except (asyncio.IncompleteReadError, ConnectionError):
                code = await proc.wait()
                raise self._died("crashes", f"the module's process died (exit code {code})") from None
            self._check_rss(force=self._suspects > 0)  # a suspect is checked on its own
        except asyncio.CancelledError:
            self._owed = reading
            raise
        finally:
            if not reading.done() and self._owed is not reading:
                reading.cancel()
        self._in_flight = []
        self._apply(reply)

    def _check_rss(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._max_rss is None or self._proc is None or (not force and now - self._rss_at < RSS_EVERY):
            return
        self._rss_at = now
        self._rss = rss_of(self._proc.pid)
        if self._rss > self._max_rss:
            raise self._died("rss_kills", f"memory {self._rss >> 20} MB above max_rss "
                                          f"{self._max_rss >> 20} MB: killed")

    def _died(self, kind: str, why: str) -> ChildDied:
        """Kill the child, count why, quarantine what it had; the error to raise."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        self.count(kind)
        self.count("errors")
        self._status, self._last_error = "failed", why
        self._errors_log.warning(kind, "module %r: %s", self.name, why)
        exc = ChildDied(why)
        records, self._in_flight = self._in_flight, []
        if records and not self._suspects and not self._stopping:
            # retried once, one record a request: only a record that ends a child on its own
            # is quarantined, not the batch that happened to be with it
            self.count("retried", len(records))
            self.queue.requeue(records)
            self._suspects = len(records)
        elif records:
            self._suspects = max(0, self._suspects - len(records))
            self.count("quarantined", len(records))
            for record in records:
                self.quarantine(record, "process", exc)
        return exc

    def _apply(self, reply: dict[str, Any]) -> None:
        for name, by in reply["counts"].items():
            self.count(name, by)
        for reason, by in reply["dropped"].items():
            self.dropped(reason, by)
        if self._committer is not None:
            for topic, ts, data, _hook, error in reply["quarantined"]:
                self._committer.quarantine(Quarantined(self.name, topic, ts, data, error))
        for hook, text, trace in reply["errors"]:
            self._errors_log.warning(hook, "module %r raised in %s: %s\n%s", self.name, hook, text, trace)
        self.context.out += records_of(reply["out"])
        self._status, self._last_error = reply["status"], reply["last_error"] or self._last_error
        self._errors_row = reply["errors_in_a_row"]
        timer_in = reply["timer_in"]
        self._timer_at = math.inf if timer_in is None else time.monotonic() + timer_in
        if "state" in reply:
            state = self.context.state
            state.clear()
            state.update(reply["state"])
        if reply.get("checkpoint"):
            self._saved.update(reply["checkpoint"])

    async def _respawn(self) -> None:
        """A new child after a death or too many errors, no sooner than the backoff allows."""
        await self._stop_child(self._hang_timeout)
        await asyncio.sleep(max(0.0, self._next_spawn - time.monotonic()))
        now = time.monotonic()
        self._next_spawn = now + self._restarts.note(now)
        self.count("restarts")
        self.context.log.warning("restarting the module's process after: %s", self._last_error)
        self._errors_row = 0
        await self.start()

    async def _stop_child(self, timeout: float) -> None:
        """Ask a live child to stop (it flushes what is open), else end it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        timeout = min(timeout, START_TIMEOUT)  # finish() without a deadline passes infinity
        if proc.returncode is None and self._status in ("running", "restarting"):
            self._proc = proc
            with contextlib.suppress(ChildDied):
                await self._call(["stop", timeout], [], timeout + 1)
            self._proc = None
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        self._status = "stopped" if self._status != "failed" else "failed"

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        interval = self.plan.cls.tick_interval
        next_tick = time.monotonic() + interval
        while True:
            if self._status != "running" or self._errors_row >= self._restarts.after_errors:
                await self._respawn()
                continue
            batch = self.queue.get_nowait()
            if batch is None:
                wait = min(next_tick, self._timer_at) - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self.queue.wait_nonempty()
                    continue
            with contextlib.suppress(ChildDied):
                if batch is not None:
                    await self._send(batch)
                now = time.monotonic()
                if now >= self._timer_at:
                    await self._call(["timers"], [], self._hang_timeout)
                if now >= next_tick:
                    next_tick = now + interval
                    await self._call(["tick", self.context.clock()], [], self._hang_timeout)
            await self._deliver()

    async def _send(self, batch: list[Record]) -> None:
        # one request for what is queued, up to the chunk: the pipe's cost is per request
        chunk = 1 if self._suspects else self._chunk
        while len(batch) < chunk and (more := self.queue.get_nowait()) is not None:
            batch = batch + more
        if len(batch) > chunk:
            self.queue.requeue(batch[chunk:])
            batch = batch[:chunk]
        started = time.monotonic()
        await self._call(["batch", rows_of(batch)], batch, self._hang_timeout)
        if self._suspects:
            self._suspects -= 1
            return
        # a request is sized to a fifth of hang_timeout from what the last one cost a record,
        # so that a slow module (one awaiting I/O record by record) is not taken for a hung one
        self._cost = cost = (time.monotonic() - started) / len(batch)
        self._chunk = BATCH_RECORDS if cost <= 0 else max(1, min(BATCH_RECORDS, int(
            self._hang_timeout * HANG_SHARE / cost)))

    async def finish(self, deadline: float = math.inf) -> None:
        """Send what is queued while the budget lasts, then stop the child (it flushes); what is
        left is quarantined as ``abandoned``, also if the agent stops waiting for us."""
        self._stopping = True  # no time to retry: what a dying child had is quarantined
        try:
            if self._owed is not None and self._proc is not None:
                reading, self._owed = self._owed, None
                with contextlib.suppress(ChildDied):
                    left = min(deadline - time.monotonic(), self._hang_timeout)
                    await self._answer(reading, max(left, 0.1))
                await self._deliver()
            restarted = False
            while (batch := self.queue.get_nowait()) is not None:
                left = deadline - time.monotonic()
                if left > 0 and self._status != "running" and not restarted:
                    restarted = True
                    await self._start_to_finish(left)
                    left = deadline - time.monotonic()
                if left <= 0 or self._status != "running":
                    self._hand_back(batch)
                    break
                if self._cost > 0:  # a request must not outlast the budget
                    self._chunk = max(1, min(self._chunk, int(left * 0.25 / self._cost)))
                with contextlib.suppress(ChildDied):
                    await self._send(batch)
                await self._deliver()
            await self._stop_child(max(deadline - time.monotonic(), 0.1))
        except asyncio.CancelledError:
            if self._proc is not None and self._proc.returncode is None:
                self._proc.kill()
            self._hand_back(self._in_flight)
            self._in_flight = []
            raise
        await self._deliver()
        self._reset_checkpoint()

    async def _start_to_finish(self, left: float) -> None:
        """A child that died shortly before the stop is waiting out its restart backoff, with
        records queued: the stop budget, not the backoff, bounds one last child, so that they
        are processed rather than abandoned (a child that does not start within half of what is
        left of the budget leaves them to be abandoned, as before)."""
        await self._stop_child(min(left / 4, self._hang_timeout))  # a half-started one, if any
        self.count("restarts")
        self.context.log.warning("restarting the module's process to finish its queue at stop")
        self._errors_row = 0
        await self.start(timeout=max(left / 2, 0.1))

    # -- what the daemon asks of a runner ----------------------------------------------------

    def checkpoint_into(self, checkpoint: Checkpoint) -> None:
        if self._saved:
            checkpoint.add(self.name, self._saved)
            self._saved = {}
        queued = self._in_flight + self.queue.snapshot()  # a batch at the child is not done yet
        if queued:
            assert checkpoint.queued is not None
            checkpoint.queued[self.name] = queued

    def health(self) -> dict[str, Any]:
        return {
            "status": self._status, "use": self.plan.spec.use, "queue": self.queue.size,
            "in_flight": len(self._in_flight), "last_error": self._last_error,
            "last_error_at": None, "isolation": "process",
            "pid": self._proc.pid if self._proc is not None else None, "rss": self._rss,
        }


def rows_of(records: list[Record]) -> list[tuple[str, float, Any]]:
    """Records as JSON can carry them (a named tuple is not a plain one to orjson)."""
    return [(topic, ts, data) for topic, ts, data in records]


def rss_of(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


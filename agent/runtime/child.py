"""The child process of a module with ``isolation = "process"``: the same ``ModuleInstance`` and
``ModuleContext`` as in the daemon, driven by requests from the parent over a pipe.

Frames are a 4-byte big-endian length and a JSON body (``agent.codec``). The parent sends
``hello`` (what to run, its state and checkpoint), then ``batch``, ``tick``, ``timers`` and
finally ``stop``; each request gets one reply with what the step did: records emitted, counts,
quarantined records, errors, the instance's status and, now and then, its state and checkpoint.
The child waits for nothing else, so a record is either answered for or still the parent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import importlib.util
import logging
import os
import signal
import struct
import sys
import time
import traceback
from typing import Any

from agent import codec
from agent.api import Module, Record
from agent.runtime.context import ModuleContext
from agent.runtime.instance import ModuleInstance, describe

HEADER = struct.Struct(">I")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
SAVE_EVERY = 1.0
"""Seconds between copies of the module's state and checkpoint sent to the parent."""


def frame(message: Any) -> bytes:
    body = codec.dumps_bytes(message)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message; ``asyncio.IncompleteReadError`` when the other end has gone."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return codec.loads(await reader.readexactly(size))


def records_of(rows: list[list[Any]]) -> list[Record]:
    return [Record(topic, ts, data) for topic, ts, data in rows]


class Step:
    """What one request made the instance do (``instance.Events``), and its module's own counts."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.quarantined: list[list[Any]] = []
        self.errors: list[list[str]] = []
        self.dropped: dict[str, int] = {}
        self.requeued: list[Record] = []

    def incr(self, name: str, by: int = 1) -> None:  # the module's ``context.counters``
        self.counts[name] = self.counts.get(name, 0) + by

    count = incr

    def quarantine(self, record: Record, hook: str, exc: BaseException) -> None:
        self.quarantined.append([record[0], record[1], record[2], hook, describe(exc)])

    def error(self, hook: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc)).rstrip()
        self.errors.append([hook, describe(exc), text])

    def dropped_(self, reason: str, by: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + by

    def requeue(self, records: list[Record]) -> None:
        self.requeued += records

    def take(self) -> dict[str, Any]:
        reply = {"counts": self.counts, "quarantined": self.quarantined,
                 "errors": self.errors, "dropped": self.dropped}
        self.counts, self.quarantined, self.errors, self.dropped = {}, [], [], {}
        return reply


class _Events:
    """``instance.Events`` onto the ``Step`` in progress (``dropped`` is a name the step uses)."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.count = step.count
        self.quarantine = step.quarantine
        self.error = step.error
        self.requeue = step.requeue

    def dropped(self, reason: str, by: int) -> None:
        self.step.dropped_(reason, by)


def load_class(module: str, qualname: str, file: str | None) -> type[Module[Any]]:
    """The module class, imported by name, or from its file (a module next to the config)."""
    try:
        if module == "__main__":  # a script's class: its file, under a name of its own
            raise ImportError(module)
        namespace: Any = importlib.import_module(module)
    except ImportError:
        if file is None:
            raise
        module = "_isolated_main" if module == "__main__" else module
        spec = importlib.util.spec_from_file_location(module, file)
        assert spec is not None and spec.loader is not None
        namespace = importlib.util.module_from_spec(spec)
        sys.modules[module] = namespace
        spec.loader.exec_module(namespace)
    for part in qualname.split("."):
        namespace = getattr(namespace, part)
    cls: type[Module[Any]] = namespace
    return cls


class Child:
    def __init__(self, hello: dict[str, Any], out: int) -> None:
        cls = load_class(hello["module"], hello["qualname"], hello.get("file"))
        self.step = Step()
        self.out = out
        named = hello["named"]
        self.context = ModuleContext(
            hello["name"], hello["state"], self.step, time.time, monotonic=time.monotonic,
            outputs=cls.outputs, inputs=tuple(named),
        )
        self.context.max_clock_skew = hello["max_clock_skew"]
        self.instance = ModuleInstance(
            cls, cls.Config.model_validate(hello["with"]), self.context, _Events(self.step),
            named_inputs=named,
        )
        self.checkpoints = cls.checkpoint is not Module.checkpoint
        self._saved_at = time.monotonic()

    async def start(self, saved: dict[str, Any] | None) -> None:
        ok = await self.instance.start()
        if ok and saved and self.checkpoints:
            try:
                self.instance.module.restore(saved)
            except Exception as exc:  # a checkpoint it cannot read: start afresh, say so
                self.instance.failed("restore", exc)
                await self.instance.start()
        self.reply(save=True)

    async def handle(self, message: list[Any]) -> bool:
        """Do one request and answer it; False after ``stop``."""
        op = message[0]
        instance = self.instance
        if op == "batch":
            batch = records_of(message[1])
            while batch:
                if instance.is_async:
                    await instance.aprocess(batch)
                else:
                    instance.process(batch)
                batch, self.step.requeued = self.step.requeued, []
        elif op == "tick":
            instance.tick(message[1])
        elif op == "timers":
            await instance.run_timers(time.monotonic())
        elif op == "stop":
            await instance.stop(timeout=message[1])
            self.reply(save=True)
            return False
        self.reply(save=time.monotonic() - self._saved_at >= SAVE_EVERY)
        return True

    def reply(self, save: bool) -> None:
        context, instance = self.context, self.instance
        reply = self.step.take()
        reply["out"] = [list(record) for record in context.take()]
        reply["status"] = instance.status
        reply["last_error"] = instance.last_error
        reply["errors_in_a_row"] = instance.errors_in_a_row
        due = context.next_timer()
        reply["timer_in"] = None if due == float("inf") else max(0.0, due - time.monotonic())
        if save:
            self._saved_at = time.monotonic()
            reply["state"] = dict(context.state)
            if self.checkpoints and instance.running:
                try:
                    reply["checkpoint"] = instance.module.checkpoint()
                except Exception as exc:
                    instance.failed("checkpoint", exc)
        data = frame(reply)
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view):]


def _tie_to_parent() -> None:
    """The parent ends the child: a stop signal sent to the whole group (systemd's default)
    must not cut the flush short, and a child left hung by a parent killed outright dies too."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def main() -> None:
    _tie_to_parent()
    # frames go out on a copy of stdout; fd 1 itself becomes stderr, so a module's print()
    # lands in the log instead of corrupting the pipe
    out = os.dup(1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s[child]: %(message)s")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    hello = await read_frame(reader)
    child = Child(hello, out)
    await child.start(hello.get("saved"))
    try:
        while await child.handle(await read_frame(reader)):
            pass
    except asyncio.IncompleteReadError:
        pass  # the parent went away: nothing left to answer to


if __name__ == "__main__":
    asyncio.run(main())

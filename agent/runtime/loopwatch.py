"""Notices a module step that holds the event loop, reports it, and interrupts it.

Module steps run on the event loop thread. A thread of its own checks every half second whether
the step in progress has run longer than ``hang_timeout``; if so it logs the module and hook,
counts a hang, and raises ``ModuleHung`` inside that step (``PyThreadState_SetAsyncExc``), which
the runner handles like any other module error. Pure-Python loops are interrupted at once; a step
stuck inside one C call (a blocking read, ``time.sleep``) is interrupted when that call returns,
and is reported as hung meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from agent.errors import ModuleHung

log = logging.getLogger(__name__)


@dataclass
class Step:
    module: str
    hook: str
    since: float
    interrupted: bool = False


class LoopWatch:
    def __init__(self, hang_timeout: float) -> None:
        self.hang_timeout = hang_timeout
        self._lock = threading.Lock()
        self._step: Step | None = None
        self._loop_thread = threading.get_ident()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._watch, name="edge-agent-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def enter(self, module: str, hook: str) -> None:
        self._step = Step(module, hook, time.monotonic())

    def leave(self) -> None:
        with self._lock:
            self._step = None

    def busy(self) -> Step | None:
        """The step that has been running longer than the timeout, if any."""
        step = self._step
        if step and time.monotonic() - step.since > self.hang_timeout:
            return step
        return None

    def _watch(self) -> None:
        while not self._stopped.wait(0.5):
            if self.busy() is None:
                continue
            import ctypes  # loaded only once there is a step to interrupt, outside the lock

            with self._lock:
                step = self._step  # checked again: the step may have ended meanwhile
                if step is None or step.interrupted:
                    continue
                held = time.monotonic() - step.since
                if held <= self.hang_timeout:
                    continue
                step.interrupted = True
                log.error(
                    "module %r has held the event loop for %.1f s in %s; interrupting it",
                    step.module, held, step.hook,
                )
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._loop_thread), ctypes.py_object(ModuleHung)
                )

"""Readings from a long-lived command: each line it prints on stdout is a reading.

The command is started directly (no shell). When it exits, whatever the status, the source
raises and the runner starts it again after a growing delay; its stderr goes to the agent's log,
a line at a time and throttled. While the bus is full, its stdout is not read: the pipe fills and
the command blocks on its next write, so nothing it prints is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from agent.api import Source, SourceContext
from agent.counters import ThrottledLog
from agent.sources.lines import LineDecoder, LineSourceConfig, split_lines

CHUNK = 256 * 1024
STOP_GRACE = 3.0


class CommandExited(Exception):
    """The command ended; ``status`` is its exit status (negative: killed by that signal)."""

    def __init__(self, command: str, status: int | None) -> None:
        self.status = status
        super().__init__(f"{command} exited with status {status}")


class ExecConfig(LineSourceConfig):
    """A long-lived command whose stdout lines are readings."""

    command: Annotated[list[str], Field(min_length=1)]
    """The program and its arguments, run without a shell: ``["/usr/local/bin/read", "--json"]``."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the command (the agent's own are passed on)."""
    cwd: Path | None = None
    """The command's working directory (default: the agent's)."""


class ExecSource(Source[ExecConfig]):
    """Runs ``command`` and takes each line it prints as a reading."""

    Config = ExecConfig
    description = "Each line a long-lived command prints is a reading (JSON or 'sensor value [ts]')."

    def __init__(self, config: ExecConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        self._decoder = LineDecoder(config, context)
        self._process: asyncio.subprocess.Process | None = None
        self._stderr_log = ThrottledLog(context.log)

    async def run(self) -> None:
        config, context = self.config, self.context
        self._process = process = await asyncio.create_subprocess_exec(
            *config.command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=config.cwd, env={**os.environ, **config.env},
            start_new_session=True,  # so that stop() reaches the command's own children too
        )
        context.log.info("started %s (pid %d)", config.command[0], process.pid)
        context.report_ok()
        assert process.stdout is not None and process.stderr is not None
        stderr = asyncio.create_task(self._log_stderr(process.stderr))
        buffer = bytearray()
        try:
            while chunk := await process.stdout.read(CHUNK):
                lines = split_lines(buffer, chunk, config.max_line)
                if lines:
                    await context.publish(self._decoder.decode(lines, time.time()))
            if buffer:  # a last line without its newline
                await context.publish(self._decoder.decode([bytes(buffer)], time.time()))
            status = await process.wait()
        finally:
            stderr.cancel()
        context.counters.incr("exits")
        raise CommandExited(config.command[0], status)

    async def stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def _log_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self._stderr_log.warning("stderr", "%s: %s", self.config.command[0], text[:500])

"""Readings from a line-oriented serial port: each line a reading, as JSON, ``sensor value [ts]``
text, or parsed by a regular expression with named groups.

pyserial with ``pyserial-asyncio-fast`` (the ``serial`` extra; the original pyserial-asyncio does
blocking I/O in the loop). When the device disappears (a USB adapter unplugged) the read fails,
the source raises, and the port is opened again with backoff until it is back.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from agent.api import Source, SourceContext
from agent.extras import require
from agent.sources.lines import LineDecoder, LineSourceConfig, split_lines

CHUNK = 64 * 1024


def _check_pattern(pattern: str) -> str:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    if "value" not in compiled.groupindex:
        raise ValueError("the pattern needs a named group 'value': (?P<value>...)")
    return pattern


class SerialConfig(LineSourceConfig):
    """A serial port that sends one reading a line."""

    port: str
    """The device: ``/dev/ttyUSB0``, ``/dev/serial/by-id/...`` (stable across replugging)."""
    baudrate: Annotated[int, Field(gt=0)] = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: Literal[1, 2] = 1
    line_ending: Literal["\n", "\r\n", "\r"] = "\n"
    format: Literal["json", "text", "regex"] = "json"  # type: ignore[assignment]  # adds regex
    """``json``, ``text`` (``sensor value [ts]``), or ``regex`` (with ``pattern``)."""
    pattern: Annotated[str, AfterValidator(_check_pattern)] | None = None
    """With ``format = "regex"``: named groups ``value`` and optionally ``sensor``, ``ts``, ``unit``."""
    sensor: str | None = None
    """With ``format = "regex"``: the sensor id when the pattern has no ``sensor`` group."""

    @model_validator(mode="after")
    def _checked(self) -> SerialConfig:
        require("serial", "type = 'serial'")
        if (self.format == "regex") != (self.pattern is not None):
            raise ValueError('pattern and format = "regex" go together')
        if self.pattern is not None and "sensor" not in re.compile(self.pattern).groupindex \
                and not self.sensor:
            raise ValueError("the pattern has no 'sensor' group: set sensor")
        return self


class SerialSource(Source[SerialConfig]):
    """Reads lines from ``port``."""

    Config = SerialConfig
    description = "Lines from a serial port: JSON, 'sensor value [ts]' or a regex (the `serial` extra)."

    def __init__(self, config: SerialConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        pattern = re.compile(config.pattern) if config.pattern else None
        self._decoder = LineDecoder(config, context, pattern=pattern, sensor=config.sensor)
        self._writer: Any = None

    async def run(self) -> None:
        from serial_asyncio_fast import open_serial_connection

        config, context = self.config, self.context
        reader, self._writer = await open_serial_connection(
            url=config.port, baudrate=config.baudrate, bytesize=config.bytesize,
            parity=config.parity, stopbits=config.stopbits,
        )
        context.report_ok()
        context.log.info("reading %s at %d baud", config.port, config.baudrate)
        carriage = config.line_ending == "\r"
        buffer = bytearray()
        while chunk := await reader.read(CHUNK):
            if carriage:
                chunk = chunk.replace(b"\r", b"\n")
            lines = split_lines(buffer, chunk, config.max_line)
            if lines:
                await context.publish(self._decoder.decode(lines, time.time()))
        raise ConnectionError(f"{config.port} closed")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()

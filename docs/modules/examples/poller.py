"""A producer with a timer: nothing comes in (``inputs = []``); every ``every`` seconds of the
monotonic clock it reads a value and emits it as a reading."""

from pathlib import Path

from agent import Module, ModuleConfig, PositiveDuration, Record


class PollerConfig(ModuleConfig):
    path: Path
    """The file to read a number from (a sysfs value, a 1-wire sensor)."""
    every: PositiveDuration = 10.0
    """Seconds between two reads, on the monotonic clock."""


class FilePoller(Module[PollerConfig]):
    description = "Reads a number from a file at a fixed interval and emits it as a reading."
    Config = PollerConfig

    async def start(self) -> None:
        self.context.every(self.config.every, self.poll)

    async def poll(self) -> None:
        text = await self.context.run_blocking(self.config.path.read_text)
        try:
            value = float(text.strip())
        except ValueError:
            self.context.counters.incr("not_a_number")
            return
        self.context.emit({"sensor": self.config.path.stem, "value": value})

    def process(self, record: Record) -> None:
        """A producer receives nothing."""

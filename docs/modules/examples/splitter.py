"""Several outputs: every reading on the module's own stream, and the ones above a limit on the
``alerts`` output too, which other modules read as ``<name>.alerts`` and ``sync`` can pick."""

from agent import Module, ModuleConfig, Record


class SplitterConfig(ModuleConfig):
    limit: float = 30.0
    """Readings above this go to ``alerts`` as well."""


class Splitter(Module[SplitterConfig]):
    description = "Passes readings on, and the ones above a limit on an alerts output too."
    Config = SplitterConfig
    outputs = ("alerts",)

    def process(self, record: Record) -> None:
        self.context.emit(record.data, ts=record.ts)
        if record.data["value"] > self.config.limit:
            alert = {"sensor": record.data["sensor"], "value": record.data["value"]}
            self.context.emit(alert, ts=record.ts, output="alerts")

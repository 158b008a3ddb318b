"""Doing I/O: each reading is enriched with a lookup that blocks (an HTTP request, a database
query), awaited so that the other modules and the sources run meanwhile."""

import time

from agent import Module, ModuleConfig, Record


class LookupConfig(ModuleConfig):
    delay: float = 0.2
    """Seconds the stand-in lookup blocks."""


class Lookup(Module[LookupConfig]):
    description = "Adds the site of each reading's sensor, looked up by a blocking call."
    Config = LookupConfig

    async def process(self, record: Record) -> None:
        site = await self.context.run_blocking(self.site_of, record.data["sensor"])
        self.context.emit({**record.data, "site": site}, ts=record.ts)

    def site_of(self, sensor: str) -> str:
        time.sleep(self.config.delay)  # stands for requests.get(...), a SQL query, a GPIO read
        return f"site-{sensor}"

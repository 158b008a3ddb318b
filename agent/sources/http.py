"""Readings from an HTTP endpoint polled every interval: the JSON it returns is a reading object
(or a list of them) in the agent's shape, or any JSON mapped by a ``[sources.payload]`` table.

httpx is an optional extra (``http``), imported when the source starts. A reply that is late,
not 2xx or not JSON is counted by reason (``timeout``, ``status_503``, ``connect``...) and the
next poll comes as usual.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from agent.api import Source, SourceContext
from agent.extras import require
from agent.sources.lines import LineDecoder, LineSourceConfig
from agent.units import PositiveDuration, Size


class HttpConfig(LineSourceConfig):
    """A JSON endpoint, fetched with GET every ``interval``."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    interval: PositiveDuration = 10.0
    timeout: PositiveDuration = 5.0
    """The whole request (connect, send, wait, read) must be done within this."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers, e.g. ``{ Accept = "application/json" }``."""
    token_env: str | None = None
    """An environment variable holding a bearer token, sent as ``Authorization: Bearer ...``."""
    max_line: Size = 1_000_000
    """A longer reply is not decoded: it is dropped as ``line_too_long``."""
    verify_tls: bool = True

    @model_validator(mode="after")
    def _checked(self) -> HttpConfig:
        require("http", "type = 'http'")
        if self.format != "json":
            raise ValueError('an HTTP endpoint is read as format = "json"')
        return self


class HttpSource(Source[HttpConfig]):
    """Polls ``url`` and hands on the readings in each reply."""

    Config = HttpConfig
    description = "A JSON endpoint polled every interval (httpx: the `http` extra)."

    def __init__(self, config: HttpConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        self._decoder = LineDecoder(config, context)
        self._client: Any = None

    async def run(self) -> None:
        import os

        import httpx

        config, context = self.config, self.context
        headers = dict(config.headers)
        if config.token_env:
            headers["Authorization"] = f"Bearer {os.environ.get(config.token_env, '')}"
        self._client = client = httpx.AsyncClient(
            timeout=config.timeout, headers=headers, verify=config.verify_tls, follow_redirects=True
        )
        async for now in context.ticks(config.interval):
            try:
                response = await client.get(config.url)
            except httpx.TimeoutException:
                self._fault("timeout", f"{config.url}: no reply within {config.timeout} s")
                continue
            except httpx.HTTPError as exc:
                self._fault("connect", f"{config.url}: {exc!r}")
                continue
            if not response.is_success:
                self._fault(f"status_{response.status_code}", f"{config.url}: {response.status_code}")
                continue
            context.report_ok()
            await context.publish(self._decoder.decode([response.content], now))

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _fault(self, reason: str, detail: str) -> None:
        self.context.fault(reason, detail)
        self.context.report_error(detail)

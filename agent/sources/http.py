"""Readings from an HTTP endpoint polled every interval: the JSON it returns is a reading object
(or a list of them) in the agent's shape, or any JSON mapped by a ``[sources.payload]`` table.

httpx is an optional extra (``http``), imported when the source starts. A reply that is late,
not 2xx or not JSON is counted by reason (``timeout``, ``status_503``, ``connect``...) and the
next poll comes as usual.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Annotated, Any

from pydantic import Field, model_validator

from agent.api import Source, SourceContext
from agent.extras import require
from agent.sources.lines import LineDecoder, LineSourceConfig
from agent.units import PositiveDuration, Size


class _Encoding(Exception):
    """A reply in a content encoding the source does not inflate."""


class HttpConfig(LineSourceConfig):
    """A JSON endpoint, fetched with GET every ``interval``."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    interval: PositiveDuration = 10.0
    timeout: PositiveDuration = 5.0
    """The whole request (connect, send, wait, read) must be done within this: a server that
    sends its reply a byte at a time is a ``timeout``."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers, e.g. ``{ Accept = "application/json" }``."""
    token_env: str | None = None
    """An environment variable holding a bearer token, sent as ``Authorization: Bearer ...``."""
    max_line: Size = 1_000_000
    """A longer reply (inflated, if compressed) is not decoded: it is dropped as
    ``line_too_long``, and no more of it than this is ever held."""
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
        if not any(name.lower() == "accept-encoding" for name in headers):
            headers["Accept-Encoding"] = "gzip, deflate"  # what _get inflates (httpx would offer more)
        self._client = client = httpx.AsyncClient(
            timeout=config.timeout, headers=headers, verify=config.verify_tls, follow_redirects=True
        )
        async for now in context.ticks(config.interval):
            try:
                async with asyncio.timeout(config.timeout):
                    status, body = await self._get(client, config.url)
            except (TimeoutError, httpx.TimeoutException):
                self._fault("timeout", f"{config.url}: no reply within {config.timeout} s")
                continue
            except httpx.HTTPError as exc:
                self._fault("connect", f"{config.url}: {exc!r}")
                continue
            except _Encoding as exc:
                self._fault("encoding", f"{config.url}: a reply in {exc} (identity, gzip or deflate only)")
                continue
            if not 200 <= status < 300:
                self._fault(f"status_{status}", f"{config.url}: {status}")
                continue
            context.report_ok()
            await context.publish(self._decoder.decode([body], now))

    async def _get(self, client: Any, url: str) -> tuple[int, bytes]:
        """The reply's status and at most ``max_line + 1`` bytes of its body, inflated within
        that bound: a reply of any length, or one compressed to inflate a thousandfold, costs
        that much memory at most (a longer one is then dropped as ``line_too_long``)."""
        limit = self.config.max_line + 1
        async with client.stream("GET", url) as response:
            if not response.is_success:
                return response.status_code, b""
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
                raise _Encoding(encoding[:40])
            inflate = None if encoding in ("", "identity") else zlib.decompressobj(wbits=47)
            body = bytearray()
            async for chunk in response.aiter_raw():
                if inflate is not None:
                    try:
                        chunk = inflate.decompress(chunk, limit - len(body))
                    except zlib.error:
                        return response.status_code, b"\0"  # not JSON: dropped as such
                body += chunk
                if len(body) >= limit:
                    break
            return response.status_code, bytes(body[:limit])

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _fault(self, reason: str, detail: str) -> None:
        self.context.fault(reason, detail)
        self.context.report_error(detail)

"""``edge-cloud serve``: the ingest, the console and its API in one event loop, stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterable, Iterator

import uvicorn

from agent.config import BrokerLogin
from cloud_sync.server.console import Console, ConsoleSettings
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.store import Store
from cloud_sync.server.store.base import redact
from cloud_sync.server.web import create_app
from cloud_sync.server.worker import Worker

log = logging.getLogger(__name__)


class HttpStartError(RuntimeError):
    """The console and API could not listen on their address (say, another program holds it)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"the console and API cannot listen on {host}:{port} (the reason is logged above)")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM stops the ingest and the API together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_forever(
    store: Store,
    login: BrokerLogin,
    tokens: Iterable[str],
    host: str,
    port: int,
    console_settings: ConsoleSettings | None = None,
    *,
    jetstream: list[str] | None = None,
    probe_broker: bool = True,
    **ingest_options: object,
) -> None:
    tokens = list(tokens)
    ingest = Ingest(store, login, **ingest_options)  # type: ignore[arg-type]
    worker = Worker(ingest, jetstream, probe_broker)
    console = Console(store, console_settings, ingest)
    app = create_app(store, tokens, ingest, console)
    server = _Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=5,
    ))
    loop = asyncio.get_running_loop()
    # What start-up made (modules, the app, the console) lives as long as the process: moved out
    # of the collector's way, the full collections that a busy ingest triggers scan only what
    # its flushes make (0.3 s of CPU less per 1,000,000 records in the drain benchmark).
    gc.collect()
    gc.freeze()

    def stop() -> None:
        log.info("stopping: the ingest flushes what it has, then the API closes")
        worker.stop()
        console.close()  # ends the live event streams, which would hold the server open
        server.should_exit = True

    http_failed = False

    async def serve_http() -> None:
        nonlocal http_failed
        try:
            await server.serve()
        except SystemExit:  # uvicorn's answer to an address it cannot bind, its reason logged
            http_failed = True
            stop()  # the ingest stops too: a console that nobody can reach is no console

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if not tokens:
        log.warning("no API token (EDGE_CLOUD_TOKEN or --tokens-file): every /api request gets 401")
    if not console.users.configured:
        log.warning("no users file (--users): nobody can sign in to the console")
    log.info("edge-cloud: store %s, console and API on http://%s:%d", redact(store.url), host, port)
    try:
        async with asyncio.TaskGroup() as group:
            ingesting = group.create_task(worker.run(), name="ingest")
            group.create_task(serve_http(), name="http")
            await ingesting
            console.close()
            server.should_exit = True
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
        store.close()
    if http_failed:
        raise HttpStartError(host, port)
    log.info("stopped")

"""Live updates: which devices changed, told to every open page as server-sent events.

The ingest calls ``ChangeHub.publish`` after each committed flush with the devices it touched
(a status, a Will, a batch). While anyone listens, the hub also asks the store every
``poll_interval`` which summaries changed, so that devices handled by *another* ingest worker
(a shared subscription) show up too.

Each listener has a set of changed device ids, not a queue: a burst of 10,000 changes is one
pending set, and a slow browser never makes the server hold more than that. ``events`` turns a
listener into an SSE stream: at most one ``changed`` event per ``min_gap`` seconds (the first
one right away), a comment every ``ping`` seconds to keep proxies from closing the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from agent import codec
from cloud_sync.server.store import Store

log = logging.getLogger(__name__)

MAX_IDS = 200
"""Past this many changed devices an event says ``all`` instead of naming them."""


@dataclass(eq=False)
class Listener:
    device_id: str | None
    """Only this device's changes, or every device's."""
    changed: set[str] = field(default_factory=set)
    everything: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> tuple[list[str], bool]:
        ids, everything = sorted(self.changed)[:MAX_IDS], self.everything or len(self.changed) > MAX_IDS
        self.changed.clear()
        self.everything = False
        self.wake.clear()
        return ids, everything


class ChangeHub:
    def __init__(
        self, store: Store | None = None, poll_interval: float = 1.0, min_gap: float = 0.5, ping: float = 15.0
    ) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.min_gap = min_gap
        self.ping = ping
        self._listeners: set[Listener] = set()
        self._closed = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._seen: dict[str, float] = {}

    def publish(self, device_ids: Iterable[str]) -> None:
        """Tell the listeners that these devices changed (call on the event loop)."""
        ids = set(device_ids)
        if not ids:
            return
        for listener in self._listeners:
            if listener.device_id is None:
                listener.changed |= ids
                listener.wake.set()
            elif listener.device_id in ids:
                listener.changed.add(listener.device_id)
                listener.wake.set()

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self._closed.set()
        if self._poller is not None:
            self._poller.cancel()

    @contextlib.asynccontextmanager
    async def listen(self, device_id: str | None = None) -> AsyncIterator[Listener]:
        listener = Listener(device_id)
        self._listeners.add(listener)
        self._start_polling()
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    async def events(self, listener: Listener, still_allowed: Callable[[], bool]) -> AsyncIterator[bytes]:
        """The SSE stream of ``listener``; ends when the hub closes or ``still_allowed`` turns
        false (the session ended)."""
        yield b"retry: 2000\n\n"
        last = 0.0
        while not self._closed.is_set():
            woke = await _wait(listener.wake, self._closed, self.ping)
            if self._closed.is_set() or not still_allowed():
                return
            if not woke:
                yield b": ping\n\n"
                continue
            gap = self.min_gap - (time.monotonic() - last)
            if gap > 0:
                await _wait(self._closed, None, gap)
            ids, everything = listener.take()
            last = time.monotonic()
            yield b"event: changed\ndata: " + codec.dumps_bytes({"devices": ids, "all": everything}) + b"\n\n"

    # -- other workers' changes, from the store --------------------------------------------------

    def _start_polling(self) -> None:
        if self.store is None or (self._poller is not None and not self._poller.done()):
            return
        self._poller = asyncio.create_task(self._poll(), name="console:poll-changes")

    async def _poll(self) -> None:
        assert self.store is not None
        since = time.time()
        while self._listeners and not self._closed.is_set():
            await asyncio.sleep(self.poll_interval)
            try:
                rows = await asyncio.to_thread(self.store.changed_since, since - 5.0)
            except Exception as exc:  # the store's own errors vary; the next poll tries again
                log.warning("cannot read changes from the store: %s", exc)
                continue
            fresh = [d for d, at in rows if self._seen.get(d) != at]
            self._seen = dict(rows)
            if rows:
                since = max(since, max(at for _, at in rows))
            self.publish(fresh)


async def _wait(event: asyncio.Event, other: asyncio.Event | None, timeout: float) -> bool:
    """Wait for ``event`` (or ``other``) at most ``timeout`` seconds; True if ``event`` is set."""
    waiters = [asyncio.ensure_future(event.wait())]
    if other is not None:
        waiters.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return event.is_set()

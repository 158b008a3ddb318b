"""In-process routing of records by MQTT topic filters, with bounded queues.

Records travel in batches (lists), so the cost of a hop is paid per batch, not per record.
A queue may go over its capacity by at most one batch; publishers then wait for room, and that
wait reaches back to the sources, which stop reading from their brokers until there is room.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from agent.api import Record
from agent.topics import matches


class RecordQueue:
    """A FIFO of record batches bounded by the number of records it holds."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._batches: deque[list[Record]] = deque()
        self._nonempty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def put_nowait(self, batch: list[Record]) -> None:
        self._batches.append(batch)
        self.size += len(batch)
        self._nonempty.set()
        if self.size >= self.capacity:
            self._room.clear()

    def requeue(self, batch: list[Record]) -> None:
        """Put records taken out but not processed back at the front, in their order."""
        if not batch:
            return
        self._batches.appendleft(batch)
        self.size += len(batch)
        self._nonempty.set()
        if self.size >= self.capacity:
            self._room.clear()

    def snapshot(self) -> list[Record]:
        """Every record queued, oldest first (a checkpoint saves them)."""
        return [record for batch in self._batches for record in batch]

    def get_nowait(self) -> list[Record] | None:
        if not self._batches:
            return None
        batch = self._batches.popleft()
        self.size -= len(batch)
        if not self._batches:
            self._nonempty.clear()
        if self.size < self.capacity:
            self._room.set()
        return batch

    async def wait_nonempty(self) -> None:
        await self._nonempty.wait()

    async def wait_room(self) -> None:
        await self._room.wait()


class Bus:
    """Routes batches of records to the queues whose topic filters match."""

    _CACHE_LIMIT = 10_000

    def __init__(self) -> None:
        self._subscriptions: list[tuple[tuple[str, ...], RecordQueue]] = []
        self._routes: dict[str, tuple[RecordQueue, ...]] = {}
        self._shared: dict[tuple[RecordQueue, ...], tuple[RecordQueue, ...]] = {}
        self.unrouted = 0

    def subscribe(self, filters: Sequence[str], queue: RecordQueue) -> None:
        self._subscriptions.append((tuple(filters), queue))
        self._routes.clear()
        self._shared.clear()

    def unsubscribe(self, queue: RecordQueue) -> None:
        self._subscriptions = [(f, q) for f, q in self._subscriptions if q is not queue]
        self._routes.clear()
        self._shared.clear()

    def publish(self, records: list[Record]) -> bool:
        """Route ``records``; True when a destination is now full (call ``wait_room``)."""
        if not records:
            return False
        routes = self._routes
        destinations: tuple[RecordQueue, ...] | None = None
        for topic in {record.topic for record in records}:
            found = routes.get(topic)
            if found is None:
                found = self._route(topic)
            if destinations is None:
                destinations = found
            elif found is not destinations:  # topics that go to different queues
                return self._publish_apart(records)
        assert destinations is not None
        for queue in destinations:  # the common case: the whole batch goes the same way
            queue.put_nowait(records)
        self.unrouted += 0 if destinations else len(records)
        return any(queue.full for queue in destinations)

    def _publish_apart(self, records: list[Record]) -> bool:
        routes = self._routes
        buckets: dict[RecordQueue, list[Record]] = {}
        for record in records:
            destinations = routes.get(record.topic)
            if destinations is None:
                destinations = self._route(record.topic)
            if not destinations:
                self.unrouted += 1
            for queue in destinations:
                bucket = buckets.get(queue)
                if bucket is None:
                    buckets[queue] = [record]
                else:
                    bucket.append(record)
        for queue, bucket in buckets.items():
            queue.put_nowait(bucket)
        return any(queue.full for queue in buckets)

    @property
    def full(self) -> bool:
        """True while some queue is full (a poller skips its polls)."""
        return any(queue.full for _, queue in self._subscriptions)

    async def wait_room(self) -> None:
        """Wait until no queue is full."""
        for _, queue in self._subscriptions:
            if queue.full:
                await queue.wait_room()

    def _route(self, topic: str) -> tuple[RecordQueue, ...]:
        """The queues ``topic`` goes to, as one shared tuple per distinct set of queues, so that
        ``publish`` tells whether a batch's topics go the same way by identity."""
        if len(self._routes) >= self._CACHE_LIMIT:
            self._routes.clear()
        destinations = tuple(
            queue for filters, queue in self._subscriptions if any(matches(f, topic) for f in filters)
        )
        destinations = self._shared.setdefault(destinations, destinations)
        self._routes[topic] = destinations
        return destinations

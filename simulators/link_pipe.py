"""One direction of a proxied connection: read, hold back as the link's mode says, write."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

CHUNK = 65_536
QUEUE_CHUNKS = 256  # chunks held for a delay before reading stops: bounds memory per pipe


class TokenBucket:
    """Bytes per second for one direction of the link, shared by all its connections."""

    def __init__(self) -> None:
        self.rate = 0.0  # 0: unlimited
        self._tokens = 0.0
        self._stamp = time.monotonic()

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self._tokens = self._burst
        self._stamp = time.monotonic()

    @property
    def _burst(self) -> float:
        # 50 ms worth, so a slow rate still passes in small, regular pieces.
        return max(self.rate / 20, 256.0)

    async def acquire(self, wanted: int) -> int:
        """Wait until some bytes may pass; how many (at most ``wanted``)."""
        while self.rate:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            grant = int(min(wanted, self._tokens))
            if grant >= min(wanted, 256):
                self._tokens -= grant
                return grant
            await asyncio.sleep((min(wanted, 256) - self._tokens) / self.rate)
        return wanted


@dataclass
class Controls:
    """What the proxy tells its pipes; changed only on the event loop's thread."""

    flowing: asyncio.Event = field(default_factory=asyncio.Event)  # cleared while half-open
    delay: float = 0.0  # seconds
    upstream: TokenBucket = field(default_factory=TokenBucket)  # client -> target
    downstream: TokenBucket = field(default_factory=TokenBucket)  # target -> client


class Pipe:
    """Copies ``reader`` to ``writer``: a reading task stamps each chunk with the time it may go
    out, a writing task waits for that time, for the link to flow, and for the bucket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 controls: Controls, bucket: TokenBucket) -> None:
        self._reader = reader
        self._writer = writer
        self._controls = controls
        self._bucket = bucket
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        self.bytes = 0

    async def run(self) -> None:
        """Until the reading side ended (EOF, reset) and all it read was written, or writing
        failed (``ConnectionError``)."""
        reading = asyncio.create_task(self._read())
        try:
            await self._write()
        finally:
            reading.cancel()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        flowing = self._controls.flowing
        while True:
            # While half-open nothing is read: the sender's kernel buffers fill, as on a link
            # that silently stopped carrying packets; a close is not seen either.
            await flowing.wait()
            try:
                data = await self._reader.read(CHUNK)
            except ConnectionError:
                data = b""
            await self._queue.put((loop.time() + self._controls.delay, data))
            if not data:
                return

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self._queue.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            await self._controls.flowing.wait()
            if not data:
                return
            while data:
                count = await self._bucket.acquire(len(data))
                self._writer.write(data[:count])
                await self._writer.drain()
                self.bytes += count
                data = data[count:]

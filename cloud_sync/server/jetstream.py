"""Device data from NATS JetStream, for ingest workers on a NATS cluster (``--jetstream``).

NATS speaks MQTT on top of its own subjects: a device's ``edge/<id>/data`` is the NATS subject
``edge.<id>.data``. NATS 2.9 grants ``$share/`` subscriptions but never delivers on them, so
several workers cannot split the data over MQTT. Instead a JetStream stream (work-queue
retention, replicated over up to three nodes) keeps every device's data subjects, and every
worker pulls from one durable consumer: JetStream hands each message to exactly one of the
workers pulling, and a worker added or removed is simply one more or one fewer puller.

Only the data goes this way. Statuses (retained, with the Last Will) are read on MQTT by every
worker, and acks go out on MQTT, as everywhere else. A message is acknowledged to JetStream
once it is handed to the ingest, as an MQTT broker's PUBACK would be: if the worker dies before
its flush commits, the device, which has no ack for those records, sends them again after its
``resend_after`` (the store drops whatever was stored twice).

Needs the ``nats`` extra (``pip install 'tidegate[nats]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from agent.backoff import Backoff

log = logging.getLogger(__name__)

STREAM_BYTES = 1 << 30
"""The stream's bound: past it the oldest data is let go (devices resend what has no ack)."""
FETCH = 256
Feed = Callable[[str, bytes], None]


def subjects(prefix: str) -> str:
    """The NATS subject filter for every device's data topic under ``prefix``."""
    return prefix.replace("/", ".") + ".*.data"


def topic_of(subject: str) -> str:
    return subject.replace(".", "/")


class JetStreamFeed:
    """Pulls device data from JetStream and feeds it to the ingest, until ``stop``."""

    def __init__(
        self, servers: list[str], feed: Feed, *, prefix: str = "edge", group: str = "edge-ingest",
        replicas: int = 3, backlogged: Callable[[], bool] = lambda: False,
    ) -> None:
        self.servers = servers
        self.prefix = prefix
        self.group = group
        # One stream per topic prefix: JetStream refuses two streams on the same subjects, and
        # a work-queue stream takes one consumer per subject, so one share group per prefix.
        self.stream = (prefix.replace("/", "_") + "_data").upper().replace("-", "_")
        self.replicas = replicas
        self.messages = 0
        self.connected = False
        self.last_error: str | None = None
        self._feed = feed
        self._backlogged = backlogged
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def health(self) -> dict[str, Any]:
        return {"servers": self.servers, "stream": self.stream, "consumer": self.group,
                "connected": self.connected, "messages": self.messages, "last_error": self.last_error}

    async def run(self) -> None:
        import nats  # the optional extra; serve checks it is there before starting

        backoff = Backoff(first=0.5, cap=10.0)
        while not self._stopping.is_set():
            client = None
            try:
                client = await nats.connect(servers=self.servers, connect_timeout=3,
                                            max_reconnect_attempts=-1, reconnect_time_wait=0.5)
                await self._pull(client)
                backoff.reset()
            except Exception as exc:  # nats-py raises its own errors and TimeoutError
                self.connected = False
                self.last_error = f"jetstream {','.join(self.servers)}: {exc!r}"
                log.warning("%s", self.last_error)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next_delay()):
                        await self._stopping.wait()
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()

    async def _pull(self, client: Any) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        js = client.jetstream()
        await self._ensure_stream(js)
        sub = await js.pull_subscribe(subjects(self.prefix), durable=self.group, stream=self.stream,
                                      config=self._consumer_config())
        self.connected = True
        self.last_error = None
        log.info("ingesting %s from JetStream stream %s, consumer %s", subjects(self.prefix),
                 self.stream, self.group)
        while not self._stopping.is_set():
            if self._backlogged():
                await asyncio.sleep(0.05)  # the store is behind: leave the data in the stream
                continue
            try:
                batch = await sub.fetch(FETCH, timeout=1.0)
            except (NatsTimeout, TimeoutError):
                continue
            for message in batch:
                self._feed(topic_of(message.subject), message.data)
                await message.ack()
            self.messages += len(batch)

    def _consumer_config(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        return ConsumerConfig(durable_name=self.group, ack_policy=AckPolicy.EXPLICIT,
                              deliver_policy=DeliverPolicy.ALL, ack_wait=30.0, max_ack_pending=20_000)

    async def _ensure_stream(self, js: Any) -> None:
        """Create the stream if it is missing, replicated on as many nodes as the cluster has (up
        to ``replicas``)."""
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            await js.stream_info(self.stream)
            return
        error: Exception | None = None
        for replicas in range(self.replicas, 0, -1):
            config = StreamConfig(
                name=self.stream, subjects=[subjects(self.prefix)], retention=RetentionPolicy.WORK_QUEUE,
                max_bytes=STREAM_BYTES, discard=DiscardPolicy.OLD, storage=StorageType.FILE,
                num_replicas=replicas,
            )
            try:
                await js.add_stream(config)
                log.info("created the JetStream stream %s on %s (%d replicas)", self.stream,
                         subjects(self.prefix), replicas)
                return
            except Exception as exc:  # fewer nodes than replicas: nats-py's APIError; try fewer
                error = exc
        raise RuntimeError(f"cannot create the JetStream stream {self.stream}: {error}")

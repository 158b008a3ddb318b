"""The cloud side of sync: subscribes to every device's data and status, stores, acknowledges.

Messages are gathered for ``flush_interval`` (or until ``flush_bytes``) and then decoded,
validated and written in one store transaction on the ingest's own thread, while the event loop
keeps reading. After the commit, each device that sent data gets its retained ack: the highest
seq up to which everything is accounted for. A message that cannot be read is kept aside in the
store's quarantine with its reason and counted, and so is one the store cannot hold (its
flush is written again without it: ``isolate``); nothing a device sends can stop the ingest.

If the store fails, what was gathered is kept (up to ``max_pending_bytes``, then the oldest is
let go: the devices send it again, since nothing of it was acknowledged) and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.backoff import Backoff
from agent.config import BrokerLogin
from agent.counters import ThrottledLog
from cloud_sync import protocol
from cloud_sync.mqtt import Client, MqttError, make_client, ssl_context, wrong_protocol
from cloud_sync.protocol import DataBatch, ProtocolError
from cloud_sync.server import isolate
from cloud_sync.server.isolate import QUARANTINE_BYTES, Message
from cloud_sync.server.ledger import DeviceState, Flush, Incoming, Quarantined, Status
from cloud_sync.server.store import Store

log = logging.getLogger(__name__)

FlushListener = Callable[[Flush, dict[str, DeviceState]], None]
_SYNC_SUFFIXES = ("/data", "/status")


class SideChannel(Protocol):
    """The console's cloud-to-device traffic on the ingest's connection (console/remote.py):
    its own filters, never shared, and the messages on them, kept out of the store's flushes."""

    def filters(self) -> list[str]: ...
    def received(self, topic: str, payload: bytes, properties: Any) -> None: ...


@dataclass
class IngestStats:
    connected: bool = False
    messages: int = 0
    flushes: int = 0
    records: int = 0
    duplicates: int = 0
    quarantined: int = 0
    store_errors: int = 0
    last_flush_at: float | None = None
    last_error: str | None = None
    pending_bytes: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class Ingest:
    def __init__(
        self,
        store: Store,
        login: BrokerLogin,
        *,
        prefix: str = "edge",
        share_group: str | None = None,
        client_id: str = "edge-cloud-ingest",
        protocol_version: str = "auto",
        flush_interval: float = 0.05,
        flush_bytes: int = 256 << 10,
        flush_messages: int = 25,
        flush_max_messages: int = 1000,
        max_pending_bytes: int = 256 << 20,
        flush_decoded_bytes: int = 64 << 20,
        mqtt_kinds: tuple[protocol.Kind, ...] = ("data", "status"),
    ) -> None:
        self.store = store
        self.login = login
        self.prefix = prefix
        self.share_group = share_group
        self.client_id = client_id
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self.flush_messages = flush_messages
        """A flush starts once this many messages (or ``flush_bytes``) wait, or after
        ``flush_interval``; it then takes what waits, up to ``flush_max_messages`` and
        ``flush_bytes``. The bound keeps acks flowing when a worker is behind: taking all that
        waited, a worker thousands of small messages behind wrote them in one transaction, no
        device got its ack before the last was written, and the next flush was bigger still."""
        self.flush_max_messages = flush_max_messages
        self.max_pending_bytes = max_pending_bytes
        self.flush_decoded_bytes = flush_decoded_bytes
        """Decoded records one flush holds in memory at most (compressed messages inflate up to
        ``protocol.MAX_DECODED`` each): past it, what is held is written, and the flush goes on."""
        self.mqtt_kinds = mqtt_kinds
        """What this worker reads over MQTT; data may come from elsewhere through ``feed``."""
        self.health_extra: dict[str, Any] = {}
        self.stats = IngestStats()
        self.protocol_version = protocol_version
        self._protocol = "3.1.1" if protocol_version == "3.1.1" else "5"
        self._auto = protocol_version == "auto"
        self._pending: deque[tuple[str, bytes]] = deque()
        self._pending_bytes = 0
        self._has_pending = asyncio.Event()
        self._stopping = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-cloud-store")
        self._errors = ThrottledLog(log, interval=30)
        self._client: Client | None = None
        self._listeners: list[FlushListener] = []
        self.side: SideChannel | None = None

    async def run(self) -> None:
        """Ingest until ``stop``, reconnecting to the broker with backoff."""
        flusher = asyncio.create_task(self._flush_loop(), name="ingest:flush")
        backoff = Backoff(first=0.5, cap=30.0)
        try:
            while not self._stopping.is_set():
                try:
                    await self._session()
                    backoff.reset()
                except (MqttError, OSError, TimeoutError) as exc:
                    self.stats.connected = False
                    self.stats.last_error = f"broker {self.login.url}: {exc}"
                    if self._auto and self._protocol == "5" and wrong_protocol(exc):
                        self._protocol = "3.1.1"
                        continue
                    self._errors.warning("broker", "%s", self.stats.last_error)
                if not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(backoff.next_delay()):
                            await self._stopping.wait()
        finally:
            self._has_pending.set()  # the flusher writes what the broker already handed us, then ends
            try:
                async with asyncio.timeout(30):
                    await flusher
            except TimeoutError:
                flusher.cancel()
            self._executor.shutdown(wait=True)

    def stop(self) -> None:
        self._stopping.set()
        self._has_pending.set()

    def use_protocol(self, version: str) -> None:
        """Connect with this MQTT version (the broker probe found the one it speaks)."""
        self._protocol = version

    async def _session(self) -> None:
        client = make_client(
            self.login, self.client_id, self._protocol, session_expiry=86400.0,
            logger=log.getChild("mqtt"), tls=ssl_context(self.login),
        )
        async with client:
            self._client = client
            self.stats.connected = True
            self.stats.last_error = None
            filters = [protocol.subscription(self.prefix, kind, self.share_group) for kind in self.mqtt_kinds]
            granted = await client.subscribe([(f, 1) for f in filters])
            if any(getattr(code, "value", code) >= 0x80 for code in granted):
                raise MqttError(f"the broker refused the subscriptions {filters}: {granted}")
            log.info("ingesting %s from %s", ", ".join(filters), self.login.url)
            await self._subscribe_side(client)
            reader = asyncio.create_task(self._read(client), name="ingest:read")
            stopping = asyncio.create_task(self._stopping.wait())
            try:
                done, _ = await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                reader.cancel()
                stopping.cancel()
                self._client = None
                self.stats.connected = False
            if reader in done:
                reader.result()  # raises what ended the connection

    async def _read(self, client: Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
            if self.side is not None and not message.topic.value.endswith(_SYNC_SUFFIXES):
                try:
                    self.side.received(message.topic.value, data, message.properties)
                except Exception:  # one bad report or reply must not end the ingest's connection
                    self.stats.counters["side_errors"] = self.stats.counters.get("side_errors", 0) + 1
                    log.exception("the console's side channel failed on %s", message.topic.value[:200])
                continue
            self.feed(message.topic.value, data)

    def feed(self, topic: str, payload: bytes) -> None:
        """Take one device message (``<prefix>/<id>/data|status``) into the next flush."""
        self._pending.append((topic, payload))
        self._pending_bytes += len(payload)
        self.stats.messages += 1
        self._has_pending.set()

    def backlogged(self) -> bool:
        """More is waiting for the store than half the bound: a feed should pause."""
        return self._pending_bytes > self.max_pending_bytes // 2

    # -- flushing -------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Gather, then decode and write on the store's thread, then acknowledge. Decoding and
        writing stay on one thread on purpose: SQLite lets go of the GIL for every row, and a
        second busy thread would make each row wait for it (the convoy effect; it tripled the
        time per row in our measurements)."""
        backoff = Backoff(first=0.5, cap=30.0)
        while not (self._stopping.is_set() and not self._pending):
            await self._has_pending.wait()
            deadline = time.monotonic() + self.flush_interval
            while (
                self._pending_bytes < self.flush_bytes
                and len(self._pending) < self.flush_messages
                and time.monotonic() < deadline
                and not self._stopping.is_set()
            ):
                await asyncio.sleep(min(0.01, self.flush_interval))
            items = self._take()
            if not items:
                continue
            if await self._write(items):
                backoff.reset()
            else:
                await asyncio.sleep(backoff.next_delay())

    def _take(self) -> list[tuple[str, bytes]]:
        """The next flush's messages from the front of what waits (see ``flush_messages``)."""
        pending = self._pending
        items: list[tuple[str, bytes]] = []
        size = 0
        while pending and not (items and (len(items) >= self.flush_max_messages or size >= self.flush_bytes)):
            item = pending.popleft()
            items.append(item)
            size += len(item[1])
        self._pending_bytes -= size
        if not pending:
            self._has_pending.clear()
        return items

    async def _write(self, items: list[tuple[str, bytes]]) -> bool:
        """Write one flush; on failure keep its messages for the next try."""
        try:
            loop = asyncio.get_running_loop()
            flush, states = await loop.run_in_executor(self._executor, self._process, items)
        except Exception as exc:  # the store's own errors (sqlite3, psycopg) vary: keep and retry
            self._keep(items)
            self.stats.store_errors += 1
            self.stats.last_error = f"store {self.store.url}: {exc}"
            self._errors.warning(
                "store", "cannot write to the store (%s); keeping %d messages, retrying", exc, len(items)
            )
            return False
        self._account(flush)
        self._acknowledge(flush, states)
        self._notify(flush, states)
        return True

    def _keep(self, items: list[tuple[str, bytes]]) -> None:
        self._pending.extendleft(reversed(items))
        self._pending_bytes = sum(len(p) for _, p in self._pending)
        while self._pending and self._pending_bytes > self.max_pending_bytes:
            _, payload = self._pending.popleft()
            self._pending_bytes -= len(payload)
            self.stats.counters["let_go_store_down"] = self.stats.counters.get("let_go_store_down", 0) + 1
        self._has_pending.set()
        self.stats.pending_bytes = self._pending_bytes

    def _process(self, items: list[tuple[str, bytes]]) -> tuple[Flush, dict[str, DeviceState]]:
        """Decode and validate a flush's messages, then store them in one transaction."""
        now = time.time()
        decoded: list[Message] = []
        held = 0
        written: tuple[Flush, dict[str, DeviceState]] | None = None
        for topic, payload in items:
            item = self._decode(topic, payload, now)
            if item is None:
                continue
            decoded.append(Message(topic, payload, item))
            held += _decoded_size(item, payload)
            if held >= self.flush_decoded_bytes:  # bounded memory: write what is held so far
                written = isolate.combine(written, isolate.write(self.store, decoded, now))
                decoded, held = [], 0
        if decoded or written is None:
            written = isolate.combine(written, isolate.write(self.store, decoded, now))
        return written

    def _decode(self, topic: str, payload: bytes, now: float) -> Incoming | None:
        device_id: str | None = None
        try:
            device_id, kind = protocol.parse_topic(self.prefix, topic)
            if kind == "data":
                return protocol.decode_batch(device_id, payload)
            if kind == "status":
                if not payload:
                    return None  # a retained status being cleared
                return Status(device_id, protocol.decode_status(payload), now)
            return None  # acks are ours
        except ProtocolError as exc:
            reason, detail = exc.reason, exc.detail
        except Exception as exc:  # a decoder bug must cost one message, never the ingest
            log.exception("decoding a message on %s failed", topic[:200])
            reason, detail = "undecodable", f"{type(exc).__name__}: {exc}"[:500]
        self._errors.warning(reason, "quarantined a message on %s: %s", topic[:200], detail)
        kept = payload[:QUARANTINE_BYTES]
        return Quarantined(topic[:1024], reason, detail, kept, len(payload), device_id)

    def _account(self, flush: Flush) -> None:
        stats = self.stats
        stats.flushes += 1
        stats.last_flush_at = time.time()
        stats.records += flush.counters.get("records", 0)
        stats.duplicates += flush.counters.get("duplicates", 0)
        stats.quarantined += len(flush.quarantined)
        stats.pending_bytes = self._pending_bytes
        for name, value in flush.counters.items():
            stats.counters[name] = stats.counters.get(name, 0) + value

    def _acknowledge(self, flush: Flush, states: dict[str, DeviceState]) -> None:
        client = self._client
        if client is None:
            return  # the devices get the ack with the next flush, or resend
        now = time.time()
        for device_id in flush.acks:
            state = states[device_id]
            ack = protocol.Ack(state.acked, state.epoch, state.max_seq, now, flush.probes.get(device_id, 0))
            try:
                client.send(protocol.topic(self.prefix, device_id, "ack"), ack.encode(), qos=1, retain=True)
            except MqttError as exc:
                self._errors.warning("ack", "cannot publish the ack for %s: %s", device_id, exc)
                return

    # -- the console's side channel (desired configs, commands, replies) ------------------------

    async def _subscribe_side(self, client: Client) -> None:
        filters = self.side.filters() if self.side is not None else []
        if not filters:
            return
        granted = await client.subscribe([(f, 1) for f in filters])
        if any(getattr(code, "value", code) >= 0x80 for code in granted):
            self._errors.warning("side", "the broker refused %s: no remote control from the console",
                                 ", ".join(filters))

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, *, correlation: bytes | None = None,
        response_topic: str | None = None, expiry: float | None = None,
    ) -> bool:
        """Publish at QoS 1 on the ingest's connection; False when it is down."""
        client = self._client
        if client is None:
            return False
        try:
            client.send(topic, payload, 1, retain, correlation=correlation, response_topic=response_topic,
                        expiry=expiry)
        except MqttError:
            return False
        return True

    @property
    def mqtt5(self) -> bool:
        return self._client is not None and self._client.protocol_name == "5"

    def subscribe(self, listener: FlushListener) -> None:
        """Call ``listener(flush, states)`` on the event loop after each committed flush, with the
        touched devices' new states (the console's live updates). A failing listener is logged."""
        self._listeners.append(listener)

    def _notify(self, flush: Flush, states: dict[str, DeviceState]) -> None:
        for listener in self._listeners:
            try:
                listener(flush, states)
            except Exception:
                log.exception("a flush listener failed")

    def health(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "connected": stats.connected,
            "broker": self.login.url,
            "messages": stats.messages,
            "records": stats.records,
            "duplicates": stats.duplicates,
            "quarantined": stats.quarantined,
            "store_errors": stats.store_errors,
            "last_flush_at": stats.last_flush_at,
            "last_error": stats.last_error,
            "pending_bytes": self._pending_bytes,
            "counters": dict(stats.counters),
            **self.health_extra,
        }


def _decoded_size(item: Incoming, payload: bytes) -> int:
    if isinstance(item, DataBatch):
        return sum(len(record[3]) for record in item.records) + 64 * len(item.records)
    return len(payload)

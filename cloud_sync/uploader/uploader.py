"""The device side of sync: drains the outbox to the cloud broker, exactly once end to end.

The uploader reads the outbox through a read-only connection of its own, on its own thread,
so it never waits on (or blocks) the writer that commits what the modules emit; its few writes
(let records go once acknowledged, set one aside) go through the writer's ``call``.

A record leaves the outbox only when the ingest's retained ack on ``<prefix>/<device>/ack``
covers it; a PUBACK only means the broker took the message. See ``tracker.py`` for the sending
rules (live first, backlog rate-limited, go-back-N resend, poison records set aside) and
docs/design/002-exactly-once.md for why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.config import CloudConfig
from agent.counters import CounterSet, ThrottledLog
from agent.outbox.store import Changes, Outbox
from cloud_sync import protocol
from cloud_sync.mqtt import Client, make_client, ssl_context, wrong_protocol
from cloud_sync.protocol import DroppedRange, Encoder
from cloud_sync.uploader.ratelimit import RateLimit
from cloud_sync.uploader.tracker import SendTracker, Sent, Verdict

log = logging.getLogger(__name__)

T = TypeVar("T")
Writer = Callable[..., Awaitable[Any]]
"""``await writer(fn, *args)`` runs ``fn`` on the thread that owns the outbox's writing connection."""

SCOPE = "sync"
HEALTH_INTERVAL = 2.0
# Reason codes that are about the connection's rights, not the message: no use setting a record
# aside for them; report and retry later.
_NOT_THE_MESSAGE = {0x87: "not authorised", 0x90: "topic name invalid"}
_TOPIC_OVERHEAD = 128


class RemoteLink(Protocol):
    """Cloud-to-device control riding on the uploader's connection (``agent.remote.link.Remote``)."""

    def filters(self, prefix: str, device_id: str) -> list[str]: ...
    def received(self, prefix: str, topic: str, payload: bytes, retain: bool, properties: Any) -> None: ...
    def connected(self) -> None: ...
    def status_fields(self) -> dict[str, Any]: ...


class LinkDead(Exception):
    """The broker stopped answering (a half-open connection), or refused us for good."""


@dataclass
class Prepared:
    """One message ready to go: its payload and the seqs it carries."""

    payload: bytes
    first: int
    last: int
    count: int
    full: bool
    too_large: int | None = None
    probe: int = 0


class Uploader:
    """Keeps one connection to the cloud broker and drains the outbox over it until ``stop``."""

    def __init__(
        self,
        config: CloudConfig,
        device_id: str,
        data_dir: Path,
        writer: Writer,
        outbox: Outbox,
        counters: CounterSet,
        version: str,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.data_dir = data_dir
        self._write = writer
        self._outbox = outbox
        self._counters = counters
        self._version = version
        self._topics = {kind: protocol.topic(config.prefix, device_id, kind) for kind in protocol.KINDS}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-agent-sync")
        self._reader: Outbox | None = None
        self._encoder: Encoder | None = None
        self.tracker = SendTracker(config.unacked_records, config.resend_after)
        self._rate = RateLimit(config.backlog_rate_bytes, config.backlog_rate_messages)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._acked_target = 0
        self._ack_changed = asyncio.Event()
        self._inflight: deque[tuple[float, asyncio.Future[ReasonCode], Prepared | None]] = deque()
        self._fatal: Exception | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._flushed_ack = 0
        self._commit_watch = False
        self._health_at = 0.0
        self._probe = 0
        self._probes: dict[int, float] = {}
        self._echoed_at = 0.0
        self._last_data_at = 0.0
        self._last_probe_at = 0.0
        self._last_seq_seen = 0
        self._announced_at = 0.0
        self._partial: tuple[int, float] | None = None
        self._protocol = "5" if config.protocol in ("auto", "5") else "3.1.1"
        self._max_payload = config.max_message_bytes
        self._batch_limit = config.max_message_bytes
        """Payload bound for a message of several records; lowered when the broker drops ours."""
        self._started = time.time()
        self._acked_samples: deque[tuple[float, int]] = deque(maxlen=64)
        self._errors = ThrottledLog(log, interval=30)
        self.epoch = ""
        self.ever_acked = False
        self.connected = False
        self.acked_at: float | None = None
        self.last_error: str | None = None
        self.sent_records = 0
        self.acked_records = 0
        self.remote: RemoteLink | None = None
        """Set by the agent with ``[remote]``: config and commands over this same connection."""
        self._client: Client | None = None
        self._status_now = asyncio.Event()

    # -- life cycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected and drain until ``stop``; reconnect with capped, jittered backoff."""
        await self._open()
        acker = asyncio.create_task(self._apply_acks(), name="sync:acks")
        backoff = Backoff(first=self.config.reconnect_min, cap=self.config.reconnect_max)
        try:
            while not self._stopping.is_set():
                connected_at = time.monotonic()
                try:
                    await self._connection()
                except Exception as exc:  # a bug must not take the daemon down: log, count, retry
                    self._counters.incr(SCOPE, "internal_errors")
                    self.last_error = f"internal error: {exc!r}"
                    log.error("sync failed; retrying", exc_info=exc)
                if self._stopping.is_set():
                    break
                if time.monotonic() - connected_at > 60:
                    backoff.reset()  # it was up for a while: this is a new outage
                delay = backoff.next_delay()
                log.info("reconnecting to %s in %.1f s", self.config.url, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        finally:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acker
            await self._flush_ack()
            self._close()

    def stop(self) -> None:
        """Finish the current connection politely (retained status ``online: false``)."""
        self._stopping.set()
        self._wake.set()

    def notify(self) -> None:
        """New records were committed: look for them now rather than at the next poll."""
        self._wake.set()

    def on_commit(self, changes: Changes) -> None:
        """The committer's hook, called just before each commit: wake the sender once the
        commit is through, and add the sync figures to the health that ``status`` reads."""
        if changes.records and not self._commit_watch:
            self._commit_watch = True
            self._background(self._wake_after_commit())
        now = time.monotonic()
        if now - self._health_at >= HEALTH_INTERVAL:
            self._health_at = now
            changes.health["sync"] = self.health()

    async def _wake_after_commit(self) -> None:
        try:
            await self._write(_nothing)  # queued behind the commit on the writer's thread
        finally:
            self._commit_watch = False
        self._wake.set()

    async def _open(self) -> None:
        self.epoch = await self._write(self._outbox.epoch)
        self._reader = await self._read(Outbox.open_readonly, self.data_dir)
        acked = await self._read(self._meta, "last_ack_seq")
        self.ever_acked = bool(acked)
        self.tracker.acked = self._acked_target = self._flushed_ack = int(acked or 0)
        self.acked_at = await self._read(self._meta, "last_ack_at")
        self._encoder = Encoder(self.device_id, self.epoch, self.config.compression)

    def _close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            self._executor.submit(reader.close).result()
        self._executor.shutdown(wait=True)

    async def _connection(self) -> None:
        """One connection, from connect to loss (or ``stop``)."""
        try:
            await self._session()
        except* (aiomqtt.MqttError, LinkDead, OSError, TimeoutError) as group:
            never_up = not self.connected
            self._lost(group.exceptions[0])
            if not isinstance(group.exceptions[0], LinkDead):  # not our own verdict on the link
                await self._judge_disconnect()
            self._inflight.clear()
            if never_up and self.config.tls:
                await self._diagnose_tls()

    async def _judge_disconnect(self) -> None:
        """The connection ended: if it did so right after a message the broker never
        acknowledged, that message may be what made the broker (or client) hang up."""
        now = time.monotonic()
        for sent_at, future, prepared in self._inflight:
            if future.done() and not future.cancelled() and future.exception() is None:
                continue
            if prepared is not None and prepared.count and now - sent_at < 5.0:
                sent = Sent(
                    prepared.first, prepared.last, prepared.count, sent_at, False, len(prepared.payload)
                )
                await self._apply(self.tracker.strike(sent, "disconnect"), "the broker hung up on it")
            break
        self._inflight.clear()

    async def _diagnose_tls(self) -> None:
        """A connect that failed with TLS on: say why, if TLS is the reason (cloud_sync/tls.py)."""
        from cloud_sync.uploader.tls import diagnose

        detail = await diagnose(self.config)
        if detail is not None:
            self.last_error = f"{self.config.url}: {detail}"
            self._counters.incr(SCOPE, "tls_errors")
            self._errors.warning("tls", "cloud link: %s", self.last_error)

    def _lost(self, exc: BaseException) -> None:
        self.connected = False
        self.last_error = f"{self.config.url}: {exc}"
        self._counters.incr(SCOPE, "connection_errors")
        if wrong_protocol(exc) and self.config.protocol == "auto" and self._protocol == "5":
            log.info("%s does not speak MQTT 5; using 3.1.1", self.config.url)
            self._protocol = "3.1.1"
            return
        self._errors.warning("link", "cloud link: %s", self.last_error)

    # -- one connection -------------------------------------------------------------------------

    async def _session(self) -> None:
        will = aiomqtt.Will(self._topics["status"], protocol.encode_status({"online": False}), 1, True)
        client = make_client(
            self.config,
            self.device_id,
            self._protocol,
            will=will,
            session_expiry=self.config.session_expiry,
            inflight=self.config.window + 4,
            logger=log.getChild("mqtt"),
            tls=ssl_context(self.config),
        )
        self._inflight.clear()
        async with client:
            self.connected, self.last_error = True, None
            broker_max = client.max_packet_size
            self._max_payload = min(self.config.max_message_bytes, (broker_max or 1 << 30) - _TOPIC_OVERHEAD)
            log.info("connected to %s (MQTT %s) as %s", self.config.url, client.protocol_name, self.device_id)
            first_ack = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                acks = group.create_task(self._read_acks(client, first_ack), name="sync:ack-reader")
                granted = await client.subscribe(self._topics["ack"], qos=1)
                if any(getattr(code, "value", code) >= 0x80 for code in granted):
                    raise LinkDead(f"the broker refused our subscription to {self._topics['ack']}")
                # The backlog figures (a scan of the outbox: 0.2 s for 1,000,000 records) are
                # read while the broker has its chance to send the retained ack.
                reading = group.create_task(self._read(self._backlog_figures))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):  # the broker sends it right after the SUBACK
                        await first_ack.wait()  # the retained ack, if any
                figures = await reading
                self.tracker.start(self._acked_target, figures["last_seq"])
                self._publish_status(client, figures)
                await self._subscribe_remote(client)
                tasks = [
                    acks,
                    group.create_task(self._send_loop(client), name="sync:sender"),
                    group.create_task(self._heartbeat(client), name="sync:heartbeat"),
                    group.create_task(self._watch(client), name="sync:watchdog"),
                ]
                await self._stopping.wait()
                for task in tasks:
                    task.cancel()
            self._client = None
            await self._say_goodbye(client)
        self.connected = False

    async def _say_goodbye(self, client: Client) -> None:
        """Retained ``online: false`` (a clean DISCONNECT suppresses the Will)."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            figures = await self._read(self._backlog_figures)
            async with asyncio.timeout(1.0):
                await client.send(self._topics["status"], self._status(False, figures), 1, True)

    # -- sending --------------------------------------------------------------------------------

    async def _send_loop(self, client: Client) -> None:
        tracker = self.tracker
        while True:
            if self._fatal:
                fatal, self._fatal = self._fatal, None
                raise LinkDead(str(fatal))
            if (oldest := tracker.due(time.monotonic())) is not None:
                await self._resend(oldest)
                continue
            if client.pending_sends >= self.config.window or not tracker.room:
                await self._sleep(self.config.resend_after / 4)
                continue
            prepared, live, wait = await self._next_message()
            if prepared is None:
                await self._sleep(wait)
                continue
            self._send(client, prepared, live)

    async def _next_message(self) -> tuple[Prepared | None, bool, float]:
        """Live records first; then the backlog, within its rate; then dropped ranges alone.
        Without a message, says how long to wait (unless woken) before looking again."""
        tracker = self.tracker
        wait = min(self.config.batch_delay * 2, self.config.resend_after / 4, 1.0)
        live = await self._prepare(tracker.live_cursor, None, ripe=self._ripe(tracker.live_cursor))
        if live is not None:
            if live.payload:
                return live, True, 0.0
            if self._partial is None or self._partial[0] != tracker.live_cursor:
                self._partial = (tracker.live_cursor, time.monotonic())  # let it fill up a little
            wait = max(0.01, self.config.batch_delay - (time.monotonic() - self._partial[1]))
        if not tracker.backlog_done:
            delay = self._rate.delay()
            if delay > 0:
                return None, False, min(wait, delay)
            backlog = await self._prepare(tracker.backlog_cursor, tracker.live_from, ripe=True)
            if backlog is not None:
                return backlog, False, 0.0
            tracker.skip(tracker.live_from, live=False)
        now = time.monotonic()
        if live is None and now - self._announced_at > self.config.resend_after:
            announcement = await self._read(self._encode_dropped_only)
            if announcement is not None:
                self._announced_at = now
                return announcement, True, 0.0
        if self._probe_due(now):
            return await self._read(self._encode_probe), True, 0.0
        return None, True, wait

    def _probe_due(self, now: float) -> bool:
        """Idle with records still unacknowledged: send an empty message the ingest will echo,
        so that a lost message is told apart from a cloud that hears nothing."""
        return bool(
            self.tracker.unacked
            and self._last_probe_at < self._last_data_at
            and now - self._last_data_at >= min(1.0, self.config.resend_after / 2)
        )

    def _ripe(self, cursor: int) -> bool:
        """Has a partial batch after ``cursor`` waited ``batch_delay`` for more records?"""
        partial = self._partial
        return (
            partial is not None
            and partial[0] == cursor
            and (time.monotonic() - partial[1] >= self.config.batch_delay)
        )

    async def _prepare(self, after: int, up_to: int | None, ripe: bool) -> Prepared | None:
        """The next message after ``after``; its payload is empty if it is a partial batch that
        is not ``ripe`` yet (nothing is encoded then)."""
        limit = self.config.batch_records
        prepared = await self._read(self._encode, after, up_to, limit, self.tracker.acked, ripe)
        if prepared is not None and prepared.too_large is not None:
            seq = prepared.too_large
            await self._set_aside(seq, "too_large", f"over {self._max_payload} bytes even alone")
            self.tracker.skip(seq, live=up_to is None)
            return None
        return prepared

    def _send(self, client: Client, prepared: Prepared, live: bool) -> None:
        future = client.send(self._topics["data"], prepared.payload, qos=1)
        now = time.monotonic()
        self._inflight.append((now, future, prepared))
        if prepared.count:
            self.tracker.on_sent(
                prepared.first, prepared.last, prepared.count, now, live, len(prepared.payload)
            )
            self._partial = None
            self._last_data_at = now
        if prepared.probe:
            self._probes[prepared.probe] = self._last_probe_at = now
            if len(self._probes) > 64:
                del self._probes[min(self._probes)]
        if not live:
            self._rate.take(len(prepared.payload))
        self.sent_records += prepared.count
        self._counters.incr(SCOPE, "messages")
        self._counters.incr(SCOPE, "sent", prepared.count)
        future.add_done_callback(lambda f: self._on_puback(f, prepared))

    def _on_puback(self, future: asyncio.Future[ReasonCode], prepared: Prepared) -> None:
        self._wake.set()
        if future.cancelled() or future.exception() is not None:
            return  # the connection went; what was not acknowledged is sent again
        code = future.result()
        if not code.is_failure:
            return
        self._counters.incr(SCOPE, "refused")
        detail = f"{code} (0x{code.value:02x})"
        if code.value in _NOT_THE_MESSAGE:
            self._fatal = LinkDead(f"the broker refused our data: {detail}; check its ACL")
            return
        self._errors.warning(
            "refused", "the broker refused seqs %d..%d: %s", prepared.first, prepared.last, detail
        )
        sent = Sent(prepared.first, prepared.last, prepared.count, 0.0, False, len(prepared.payload))
        self._background(self._apply(self.tracker.refused(sent), f"refused by the broker: {detail}"))

    async def _resend(self, oldest: Sent) -> None:
        self._counters.incr(SCOPE, "resends")
        log.info(
            "no ack for seqs %d..%d after %.0f s (cloud acked %d); sending again from there",
            oldest.first,
            oldest.last,
            time.monotonic() - oldest.at,
            self.tracker.acked,
        )
        later_arrived = self._echoed_at > oldest.at  # a probe sent after it got through
        verdict = self.tracker.resend(oldest, later_arrived)
        await self._apply(verdict, "lost again and again while later messages arrived")

    async def _apply(self, verdict: Verdict | None, why: str) -> None:
        """Act on a poison message: smaller batches from now on, or one record set aside."""
        if verdict is None:
            return
        if verdict.shrink_to is not None and verdict.shrink_to < self._batch_limit:
            self._batch_limit = verdict.shrink_to
            self._counters.incr(SCOPE, "batch_shrinks")
            log.warning("%s; sending batches of at most %d bytes from now on", why, self._batch_limit)
        if verdict.set_aside is not None:
            seq = verdict.set_aside
            await self._set_aside(seq, "undeliverable", f"{why} (over the broker's size limit?)")
            self.tracker.skip(seq, live=seq > self.tracker.live_from)

    async def _set_aside(self, seq: int, reason: str, detail: str) -> None:
        log.warning("setting record seq %d aside (%s): %s", seq, reason, detail)
        if await self._write(self._outbox.set_aside, seq, reason, detail):
            self._counters.incr(SCOPE, "set_aside")
        self._announced_at = 0.0  # announce the new dropped range soon

    def _background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    # -- acks from the cloud ---------------------------------------------------------------------

    async def _read_acks(self, client: Client, first: asyncio.Event) -> None:
        async for message in client.messages:
            first.set()
            if str(message.topic) != self._topics["ack"]:
                self._to_remote(message)
                continue
            if not isinstance(message.payload, bytes | bytearray):
                continue
            try:
                ack = protocol.decode_ack(bytes(message.payload))
            except protocol.ProtocolError as exc:
                self._counters.incr(SCOPE, "bad_acks")
                self._errors.warning("bad-ack", "ignoring an ack: %s", exc)
                continue
            await self._on_ack(ack)

    async def _on_ack(self, ack: protocol.Ack) -> None:
        if ack.epoch and ack.epoch != self.epoch:
            await self._foreign_ack(ack)
            return
        if ack.probe in self._probes:
            self._echoed_at = max(self._echoed_at, self._probes[ack.probe])
        if ack.seq > self.tracker.acked:
            if ack.seq > self._last_seq_seen:
                self._last_seq_seen = await self._read(self._last_seq)
            ack_seq = min(ack.seq, self._last_seq_seen)  # never trust an ack beyond our own seqs
            before = self.tracker.acked
            if self.tracker.on_ack(ack_seq, ack.max_seq):
                self.acked_records += ack_seq - before
                self._acked_samples.append((time.monotonic(), self.acked_records))
                self._acked_target = ack_seq
                self._ack_changed.set()
                self._wake.set()
        else:
            self.tracker.on_ack(ack.seq, ack.max_seq)

    async def _foreign_ack(self, ack: protocol.Ack) -> None:
        """An ack for another outbox of this device id: the cloud has seen seqs up to
        ``max_seq`` from it. A new outbox (never acked) moves its seqs above those; otherwise two
        gateways share one device id, which only the operator can fix."""
        if not self.ever_acked and ack.max_seq > 0:
            offset = await self._write(self._outbox.rebase, ack.max_seq)
            if offset:
                log.warning(
                    "the cloud knows device %s up to seq %d from an earlier outbox; renumbered "
                    "this outbox's records by +%d",
                    self.device_id,
                    ack.max_seq,
                    offset,
                )
                self._counters.incr(SCOPE, "rebased")
                raise LinkDead("outbox renumbered; reconnecting to start over")
            return
        self._counters.incr(SCOPE, "epoch_conflicts")
        self.last_error = (
            f"the cloud acks another outbox ({ack.epoch}) for device {self.device_id}: "
            "is another gateway using the same device_id?"
        )
        self._errors.warning("epoch", "%s", self.last_error)

    async def _apply_acks(self) -> None:
        """Let acknowledged records go, one outbox transaction per ack (latest wins)."""
        while True:
            await self._ack_changed.wait()
            self._ack_changed.clear()
            await self._flush_ack()

    async def _flush_ack(self) -> None:
        target = self._acked_target
        if target <= self._flushed_ack:
            return
        await self._write(self._outbox.acknowledge, target)
        self._flushed_ack = target
        self.ever_acked = True
        self.acked_at = time.time()

    # -- liveness and status --------------------------------------------------------------------

    async def _watch(self, client: Client) -> None:
        """A PUBACK that does not come within one keepalive means the link is dead, even if
        the socket looks open (a half-open connection); paho's PINGREQ covers an idle link."""
        keepalive = self.config.keepalive
        while True:
            await asyncio.sleep(keepalive / 4)
            inflight = self._inflight
            while inflight and inflight[0][1].done():
                inflight.popleft()
            if inflight and time.monotonic() - inflight[0][0] > keepalive:
                self._counters.incr(SCOPE, "dead_links")
                raise LinkDead(f"no PUBACK from the broker for {keepalive:.0f} s: the link is dead")

    async def _heartbeat(self, client: Client) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.heartbeat):
                    await self._status_now.wait()
            self._status_now.clear()
            self._publish_status(client, await self._read(self._backlog_figures))

    def _publish_status(self, client: Client, figures: dict[str, Any] | None = None) -> None:
        future = client.send(self._topics["status"], self._status(True, figures), qos=1, retain=True)
        self._inflight.append((time.monotonic(), future, None))

    def _status(self, online: bool, figures: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {
            "online": online,
            "version": self._version,
            "epoch": self.epoch,
            "uptime_s": round(time.time() - self._started, 1),
            "last_ack": {"seq": self.tracker.acked, "at": self.acked_at},
            "send_rate": round(self.send_rate(), 1),
            "errors": {
                k: v for (s, k), v in self._counters.totals.items() if s == SCOPE and k in _ERROR_NAMES
            },
            "last_error": self.last_error,
            "clock": {"time": time.time(), "synced": _clock_synced()},
        }
        if self.remote is not None:
            body |= self.remote.status_fields()
        return protocol.encode_status(body | (figures or {}))

    def send_rate(self) -> float:
        """Records acknowledged per second over the last minute or so."""
        samples = self._acked_samples
        now = time.monotonic()
        while len(samples) > 1 and now - samples[0][0] > 60:
            samples.popleft()
        if len(samples) < 2 or now - samples[0][0] <= 0:
            return 0.0
        return (samples[-1][1] - samples[0][1]) / max(1.0, now - samples[0][0])

    def health(self) -> dict[str, Any]:
        """What ``edge-agent status`` shows under ``sync``."""
        return {
            "connected": self.connected,
            "broker": self.config.url,
            "protocol": self._protocol if self.connected else None,
            "acked_seq": self.tracker.acked,
            "acked_at": self.acked_at,
            "send_rate": round(self.send_rate(), 1),
            "unacked_records": self.tracker.unacked,
            "last_error": self.last_error,
            "epoch": self.epoch,
        }

    # -- cloud to device: config and commands over this connection (agent/remote.py) -------------

    async def _subscribe_remote(self, client: Client) -> None:
        self._client = client
        if self.remote is None:
            return
        filters = self.remote.filters(self.config.prefix, self.device_id)
        if filters:
            granted = await client.subscribe([(f, 1) for f in filters])
            refused = [f for f, code in zip(filters, granted, strict=False) if _refused(code)]
            if refused:  # sync goes on; the operator sees why remote control does not
                self._counters.incr(SCOPE, "remote_refused")
                self.last_error = f"the broker refused our subscription to {', '.join(refused)} (ACL?)"
                log.error("%s", self.last_error)
            else:
                log.info("remote control: subscribed to %s", ", ".join(filters))
        self.remote.connected()

    def _to_remote(self, message: aiomqtt.Message) -> None:
        if self.remote is None or not isinstance(message.payload, bytes | bytearray):
            return
        self.remote.received(
            self.config.prefix, str(message.topic), bytes(message.payload), message.retain, message.properties
        )

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, correlation: bytes | None = None
    ) -> bool:
        """Publish at QoS 1 now (a reply, a config report); False if not connected."""
        client = self._client
        if client is None or not self.connected:
            return False
        try:
            client.send(topic, payload, 1, retain, correlation=correlation)
        except aiomqtt.MqttError:
            return False
        return True

    def sync_now(self) -> None:
        """Look for records to send now, and publish a fresh status (the ``sync-now`` command)."""
        self._wake.set()
        self._status_now.set()

    # -- reading the outbox (on the uploader's own thread) -----------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _meta(self, key: str) -> Any:
        assert self._reader is not None
        return self._reader.meta(key)

    def _last_seq(self) -> int:
        assert self._reader is not None
        return self._reader.last_seq()

    def _encode(self, after: int, up_to: int | None, limit: int, acked: int, ripe: bool) -> Prepared | None:
        assert self._reader is not None and self._encoder is not None
        rows = self._reader.read_rows(after, limit, self.config.batch_bytes, up_to)
        if not rows:
            return None
        full = len(rows) >= limit or sum(r[4] for r in rows) >= self.config.batch_bytes * 0.9
        if not (full or ripe):
            return Prepared(b"", rows[0][0], rows[-1][0], len(rows), False)
        dropped = self._dropped(acked)
        while True:
            payload = self._encoder.encode([r[:4] for r in rows], acked, dropped)
            if len(rows) == 1 and len(payload) > self._max_payload:
                return Prepared(b"", rows[0][0], rows[0][0], 0, True, too_large=rows[0][0])
            if len(rows) == 1 or len(payload) <= min(self._batch_limit, self._max_payload):
                return Prepared(payload, rows[0][0], rows[-1][0], len(rows), full)
            rows = rows[: len(rows) // 2]
            full = True

    def _encode_dropped_only(self) -> Prepared | None:
        assert self._encoder is not None
        dropped = self._dropped(self.tracker.acked)
        if not dropped:
            return None
        payload = self._encoder.encode([], self.tracker.acked, dropped)
        return Prepared(payload, 0, 0, 0, True)

    def _encode_probe(self) -> Prepared:
        assert self._encoder is not None
        self._probe += 1
        payload = self._encoder.encode(
            [], self.tracker.acked, self._dropped(self.tracker.acked), probe=self._probe
        )
        return Prepared(payload, 0, 0, 0, True, probe=self._probe)

    def _dropped(self, acked: int) -> list[DroppedRange]:
        assert self._reader is not None
        return [DroppedRange(*row) for row in self._reader.dropped_after(acked)]

    def _backlog_figures(self) -> dict[str, Any]:
        assert self._reader is not None
        backlog = self._reader.backlog()
        oldest = backlog["oldest_ts"]
        return {
            "backlog": {
                "rows": backlog["rows"],
                "bytes": backlog["bytes"],
                "oldest_unsent_age_s": None if oldest is None else round(max(0.0, time.time() - oldest), 1),
            },
            "dropped": self._reader.counters().get("dropped", {}),
            "last_seq": self._reader.last_seq(),
        }

    # -- draining once (``edge-agent sync --once``) ----------------------------------------------

    async def drained(self, target: int) -> None:
        """Return once the cloud's ack covers ``target``."""
        while self.tracker.acked < target:
            await asyncio.sleep(0.05)


_ERROR_NAMES = {
    "connection_errors",
    "tls_errors",
    "refused",
    "resends",
    "set_aside",
    "dead_links",
    "bad_acks",
    "epoch_conflicts",
}


def _refused(code: Any) -> bool:
    return int(getattr(code, "value", code)) >= 0x80


def _nothing() -> None:
    pass


def _clock_synced() -> bool | None:
    """Whether systemd-timesyncd says the clock is synchronised (None where it cannot tell)."""
    if os.path.isdir("/run/systemd/timesync"):
        return os.path.exists("/run/systemd/timesync/synchronized")
    return None

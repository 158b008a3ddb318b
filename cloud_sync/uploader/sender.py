"""Sending: which records go next, in what message, and what to do when one will not go.

Live records go first; the backlog follows within its rate; dropped ranges are announced; an
idle link with records unacknowledged sends a probe the ingest echoes. A message the broker
refuses, keeps losing or hangs up on is judged by ``tracker.py`` (smaller batches, or one record
set aside, counted and announced).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable

from agent.config import CloudConfig
from agent.counters import CounterSet, ThrottledLog
from agent.outbox import Outbox
from cloud_sync.mqtt import Client, ReasonCode
from cloud_sync.uploader.acks import Acks, Writer
from cloud_sync.uploader.errors import LinkDead
from cloud_sync.uploader.ratelimit import RateLimit
from cloud_sync.uploader.reader import OutboxReader, Prepared
from cloud_sync.uploader.status import SCOPE
from cloud_sync.uploader.tracker import SendTracker, Sent, Verdict

log = logging.getLogger("cloud_sync.uploader.uploader")
# Reason codes that are about the connection's rights, not the message: no use setting a record
# aside for them; report and retry later.
_NOT_THE_MESSAGE = {0x87: "not authorised", 0x90: "topic name invalid"}

Inflight = deque[tuple[float, "asyncio.Future[ReasonCode]", Prepared | None]]


class Sender:
    """Sends outbox records over one client at a time, within the window and the backlog rate."""

    def __init__(
        self,
        config: CloudConfig,
        topic: str,
        reader: OutboxReader,
        tracker: SendTracker,
        acks: Acks,
        write: Writer,
        outbox: Outbox,
        counters: CounterSet,
        wake: asyncio.Event,
    ) -> None:
        self.config = config
        self._topic = topic
        self._reader = reader
        self._tracker = tracker
        self._acks = acks
        self._write = write
        self._outbox = outbox
        self._counters = counters
        self._wake = wake
        self._rate = RateLimit(config.backlog_rate_bytes, config.backlog_rate_messages)
        self._errors = ThrottledLog(log, interval=30)
        self._tasks: set[asyncio.Future[None]] = set()
        self._last_data_at = 0.0
        self._last_probe_at = 0.0
        self._announced_at = 0.0
        self._partial: tuple[int, float] | None = None
        self.inflight: Inflight = deque()
        """Messages (and statuses) sent on this connection and not yet acknowledged by the broker."""
        self.fatal: Exception | None = None
        self.max_payload = config.max_message_bytes
        self.batch_limit = config.max_message_bytes
        """Payload bound for a message of several records; lowered when the broker drops ours."""
        self.sent_records = 0

    async def judge_disconnect(self) -> None:
        """The connection ended: if it did so right after a message the broker never
        acknowledged, that message may be what made the broker (or client) hang up."""
        now = time.monotonic()
        for sent_at, future, prepared in self.inflight:
            if future.done() and not future.cancelled() and future.exception() is None:
                continue
            if prepared is not None and prepared.count and now - sent_at < 5.0:
                sent = Sent(
                    prepared.first, prepared.last, prepared.count, sent_at, False, len(prepared.payload)
                )
                await self._apply(self._tracker.strike(sent, "disconnect"), "the broker hung up on it")
            break
        self.inflight.clear()

    async def run(self, client: Client) -> None:
        tracker = self._tracker
        while True:
            if self.fatal:
                fatal, self.fatal = self.fatal, None
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
        tracker = self._tracker
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
            announcement = await self._reader.call(self._reader.encode_dropped_only, self._tracker.acked)
            if announcement is not None:
                self._announced_at = now
                return announcement, True, 0.0
        if self._probe_due(now):
            return await self._reader.call(self._reader.encode_probe, self._tracker.acked), True, 0.0
        return None, True, wait

    def _probe_due(self, now: float) -> bool:
        """Idle with records still unacknowledged: send an empty message the ingest will echo,
        so that a lost message is told apart from a cloud that hears nothing."""
        return bool(
            self._tracker.unacked
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
        limits = (self.max_payload, min(self.batch_limit, self._tracker.message_bytes(self.max_payload)))
        prepared = await self._reader.call(
            self._reader.encode, after, up_to, self._tracker.acked, ripe, limits
        )
        if prepared is not None and prepared.too_large is not None:
            seq = prepared.too_large
            await self._set_aside(seq, "too_large", f"over {self.max_payload} bytes even alone")
            self._tracker.skip(seq, live=up_to is None)
            return None
        return prepared

    def _send(self, client: Client, prepared: Prepared, live: bool) -> None:
        future = client.send(self._topic, prepared.payload, qos=1)
        now = time.monotonic()
        self.inflight.append((now, future, prepared))
        if prepared.count:
            self._tracker.on_sent(
                prepared.first, prepared.last, prepared.count, now, live, len(prepared.payload)
            )
            self._partial = None
            self._last_data_at = now
        if prepared.probe:
            self._last_probe_at = now
            self._acks.probe_sent(prepared.probe, now)
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
            self.fatal = LinkDead(f"the broker refused our data: {detail}; check its ACL")
            return
        self._errors.warning(
            "refused", "the broker refused seqs %d..%d: %s", prepared.first, prepared.last, detail
        )
        sent = Sent(prepared.first, prepared.last, prepared.count, 0.0, False, len(prepared.payload))
        self.background(self._apply(self._tracker.refused(sent), f"refused by the broker: {detail}"))

    async def _resend(self, oldest: Sent) -> None:
        self._counters.incr(SCOPE, "resends")
        log.info(
            "no ack for seqs %d..%d after %.0f s (cloud acked %d); sending again from there",
            oldest.first,
            oldest.last,
            time.monotonic() - oldest.at,
            self._tracker.acked,
        )
        later_arrived = self._acks.echoed_at > oldest.at  # a probe sent after it got through
        verdict = self._tracker.resend(oldest, later_arrived)
        await self._apply(verdict, "lost again and again while later messages arrived")

    async def _apply(self, verdict: Verdict | None, why: str) -> None:
        """Act on a poison message: smaller batches from now on, or one record set aside."""
        if verdict is None:
            return
        if verdict.shrink_to is not None and verdict.shrink_to < self.batch_limit:
            self.batch_limit = verdict.shrink_to
            self._counters.incr(SCOPE, "batch_shrinks")
            log.warning("%s; sending batches of at most %d bytes from now on", why, self.batch_limit)
        if verdict.set_aside is not None:
            seq = verdict.set_aside
            await self._set_aside(seq, "undeliverable", f"{why} (over the broker's size limit?)")
            self._tracker.skip(seq, live=seq > self._tracker.live_from)

    async def _set_aside(self, seq: int, reason: str, detail: str) -> None:
        log.warning("setting record seq %d aside (%s): %s", seq, reason, detail)
        if await self._write(self._outbox.set_aside, seq, reason, detail):
            self._counters.incr(SCOPE, "set_aside")
        self._announced_at = 0.0  # announce the new dropped range soon

    def background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

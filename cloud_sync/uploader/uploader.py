"""The device side of sync: drains the outbox to the cloud broker, exactly once end to end.

The uploader reads the outbox through a read-only connection of its own, on its own thread
(``reader.py``), so it never waits on (or blocks) the writer that commits what the modules emit;
its few writes (let records go once acknowledged, set one aside) go through the writer's ``call``.

With ``url`` a list (the nodes of a clustered broker), one node is used at a time; when it
cannot be reached or the link drops, the next one is tried at once, and only after a round of
every node does the backoff apply. Whatever the old node had not acknowledged is sent again on
the new one (the tracker starts from the ingest's ack), and the ingest drops the repeats.

A record leaves the outbox only when the ingest's retained ack on ``<prefix>/<device>/ack``
covers it; a PUBACK only means the broker took the message. See ``tracker.py`` for the sending
rules (live first, backlog rate-limited, go-back-N resend, poison records set aside) and
docs/design/002-exactly-once.md for why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from agent.backoff import Backoff
from agent.config import CloudConfig
from agent.counters import CounterSet, ThrottledLog
from agent.outbox import Changes, Outbox
from agent.tasks import supervised
from cloud_sync import protocol
from cloud_sync.mqtt import Client, Message, MqttError, Will, make_client, ssl_context, wrong_protocol
from cloud_sync.uploader import remote_link
from cloud_sync.uploader.acks import Acks, Writer
from cloud_sync.uploader.errors import LinkDead
from cloud_sync.uploader.reader import OutboxReader
from cloud_sync.uploader.remote_link import RemoteLink
from cloud_sync.uploader.sender import Sender
from cloud_sync.uploader.status import SCOPE, SendRate, clock, error_counts
from cloud_sync.uploader.tracker import SendTracker

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 2.0
_TOPIC_OVERHEAD = 128


MAX_INCOMING_PACKET = protocol.MAX_DESIRED + (64 << 10)
"""MQTT 5 Maximum Packet Size: the largest thing the cloud sends a device is a desired config
(acks and commands are far smaller); the broker withholds anything larger."""


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
        self.reader = OutboxReader(config, device_id, data_dir)
        self.tracker = SendTracker(config.unacked_records, config.resend_after)
        self.rate = SendRate()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._node = 0  # index into config.urls
        self._failed_nodes = 0  # nodes tried without success since the link was last up
        self._commit_watch = False
        self._health_at = 0.0
        self._protocol = "5" if config.protocol in ("auto", "5") else "3.1.1"
        self._started = time.time()
        self._errors = ThrottledLog(log, interval=30)
        self.acks = Acks(
            device_id, self.tracker, self.reader, writer, outbox, counters, self.rate, self._wake.set
        )
        self.connected = False
        self.connected_once = False  # since the last move to another node
        self.last_error: str | None = None
        self.sender = Sender(
            config,
            self._topics["data"],
            self.reader,
            self.tracker,
            self.acks,
            writer,
            outbox,
            counters,
            self._wake,
        )
        self.remote: RemoteLink | None = None
        """Set by the agent with ``[remote]``: config and commands over this same connection."""
        self._client: Client | None = None
        self._status_now = asyncio.Event()

    # -- life cycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected and drain until ``stop``; reconnect with capped, jittered backoff."""
        await self._open()
        acker = asyncio.create_task(
            supervised("sync:acks", self.acks.release, self._counters), name="sync:acks"
        )
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
                delay = self._next_node(backoff)
                log.info("reconnecting to %s in %.1f s", self.url, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        finally:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acker
            await self.acks.flush()
            self.reader.close()

    @property
    def url(self) -> str:
        """The broker node in use (or tried next)."""
        urls = self.config.urls
        return urls[self._node % len(urls)]

    def _next_node(self, backoff: Backoff) -> float:
        """After a loss: the next node at once while some are untried in this outage, then the
        backoff's delay once a round of them has failed."""
        nodes = len(self.config.urls)
        if nodes == 1:
            return backoff.next_delay()
        self._failed_nodes = 0 if self.connected_once else self._failed_nodes + 1
        self.connected_once = False
        self._node = (self._node + 1) % nodes
        self._counters.incr(SCOPE, "failovers")
        if self._failed_nodes < nodes:
            return min(self.config.reconnect_min, 0.2)
        self._failed_nodes = 0
        return backoff.next_delay()

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
            self.sender.background(self._wake_after_commit())
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
        epoch = await self._write(self._outbox.epoch)
        await self.reader.open(epoch)
        await self.acks.load(epoch)

    async def _connection(self) -> None:
        """One connection, from connect to loss (or ``stop``)."""
        try:
            await self._session()
        except* (MqttError, LinkDead, OSError, TimeoutError) as group:
            never_up = not self.connected
            self._lost(group.exceptions[0])
            if not isinstance(group.exceptions[0], LinkDead):  # not our own verdict on the link
                await self.sender.judge_disconnect()
            self.sender.inflight.clear()
            if never_up and self.config.tls:
                await self._diagnose_tls()

    async def _diagnose_tls(self) -> None:
        """A connect that failed with TLS on: say why, if TLS is the reason (cloud_sync/tls.py)."""
        from cloud_sync.uploader.tls import diagnose

        detail = await diagnose(self.config.node(self._node))
        if detail is not None:
            self.last_error = f"{self.url}: {detail}"
            self._counters.incr(SCOPE, "tls_errors")
            self._errors.warning("tls", "cloud link: %s", self.last_error)

    def _lost(self, exc: BaseException) -> None:
        self.connected = False
        self.last_error = f"{self.url}: {exc}"
        self._counters.incr(SCOPE, "connection_errors")
        if wrong_protocol(exc) and self.config.protocol == "auto" and self._protocol == "5":
            log.info("%s does not speak MQTT 5; using 3.1.1", self.url)
            if len(self.config.urls) > 1:
                self._node -= 1  # the same node again, in 3.1.1 (_next_node moves on by one)
            self._protocol = "3.1.1"
            return
        self._errors.warning("link", "cloud link: %s", self.last_error)

    # -- one connection -------------------------------------------------------------------------

    async def _session(self) -> None:
        will = Will(self._topics["status"], protocol.encode_status({"online": False}), 1, True)
        login = self.config.node(self._node)
        client = make_client(
            login,
            self.device_id,
            self._protocol,
            will=will,
            session_expiry=self.config.session_expiry,
            inflight=self.config.window + 4,
            logger=log.getChild("mqtt"),
            tls=ssl_context(login),
            max_packet=MAX_INCOMING_PACKET,
        )
        self.sender.inflight.clear()
        async with client:
            self.connected, self.last_error = True, None
            self.connected_once = True
            broker_max = client.max_packet_size
            self.sender.max_payload = min(
                self.config.max_message_bytes, (broker_max or 1 << 30) - _TOPIC_OVERHEAD
            )
            log.info("connected to %s (MQTT %s) as %s", login.url, client.protocol_name, self.device_id)
            first_ack = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                acks = group.create_task(
                    self.acks.read(client, self._topics["ack"], first_ack, self._to_remote),
                    name="sync:ack-reader",
                )
                granted = await client.subscribe(self._topics["ack"], qos=1)
                if any(getattr(code, "value", code) >= 0x80 for code in granted):
                    raise LinkDead(f"the broker refused our subscription to {self._topics['ack']}")
                # The backlog figures (a scan of the outbox: 0.2 s for 1,000,000 records) are
                # read while the broker has its chance to send the retained ack.
                reading = group.create_task(self.reader.call(self.reader.backlog_figures))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):  # the broker sends it right after the SUBACK
                        await first_ack.wait()  # the retained ack, if any
                figures = await reading
                self.tracker.start(self.acks.target, figures["last_seq"])
                self._publish_status(client, figures)
                await self._subscribe_remote(client)
                tasks = [
                    acks,
                    group.create_task(self.sender.run(client), name="sync:sender"),
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
        with contextlib.suppress(MqttError, TimeoutError):
            figures = await self.reader.call(self.reader.backlog_figures)
            async with asyncio.timeout(1.0):
                await client.send(self._topics["status"], self._status(False, figures), 1, True)

    # -- liveness and status --------------------------------------------------------------------

    async def _watch(self, client: Client) -> None:
        """No PUBACK for one keepalive while messages wait for theirs means the link is dead,
        even if the socket looks open (a half-open connection); paho's PINGREQ covers an idle
        link. The wait counts from the oldest message's PUBLISH or the last PUBACK, whichever
        is later: on a slow link a window's messages are acknowledged one after another, and the
        last may wait far longer than a keepalive on a link that is alive."""
        keepalive = self.config.keepalive
        progress_at = 0.0
        while True:
            await asyncio.sleep(keepalive / 4)
            inflight = self.sender.inflight
            while inflight and inflight[0][1].done():
                inflight.popleft()
                progress_at = time.monotonic()
            if inflight and time.monotonic() - max(inflight[0][0], progress_at) > keepalive:
                self._counters.incr(SCOPE, "dead_links")
                raise LinkDead(f"no PUBACK from the broker for {keepalive:.0f} s: the link is dead")

    async def _heartbeat(self, client: Client) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.heartbeat):
                    await self._status_now.wait()
            self._status_now.clear()
            self._publish_status(client, await self.reader.call(self.reader.backlog_figures))

    def _publish_status(self, client: Client, figures: dict[str, Any] | None = None) -> None:
        future = client.send(self._topics["status"], self._status(True, figures), qos=1, retain=True)
        self.sender.inflight.append((time.monotonic(), future, None))

    def _status(self, online: bool, figures: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {
            "online": online,
            "version": self._version,
            "epoch": self.acks.epoch,
            "uptime_s": round(time.time() - self._started, 1),
            "last_ack": {"seq": self.tracker.acked, "at": self.acks.acked_at},
            "send_rate": round(self.rate.per_second(), 1),
            "errors": error_counts(self._counters.totals),
            "last_error": self.last_error,
            "clock": clock(),
        }
        if self.remote is not None:
            body |= self.remote.status_fields()
        return protocol.encode_status(body | (figures or {}))

    def health(self) -> dict[str, Any]:
        """What ``edge-agent status`` shows under ``sync``."""
        return {
            "connected": self.connected,
            "broker": self.url,
            "protocol": self._protocol if self.connected else None,
            "acked_seq": self.tracker.acked,
            "acked_at": self.acks.acked_at,
            "send_rate": round(self.rate.per_second(), 1),
            "unacked_records": self.tracker.unacked,
            "last_error": self.last_error,
            "epoch": self.acks.epoch,
        }

    # -- cloud to device: config and commands over this connection (agent/remote/link.py) -------

    async def _subscribe_remote(self, client: Client) -> None:
        self._client = client
        if self.remote is None:
            return
        refused = await remote_link.subscribe(client, self.remote, self.config.prefix, self.device_id)
        if refused:  # sync goes on; the operator sees why remote control does not
            self._counters.incr(SCOPE, "remote_refused")
            self.last_error = f"the broker refused our subscription to {', '.join(refused)} (ACL?)"
            log.error("%s", self.last_error)

    def _to_remote(self, message: Message) -> None:
        remote_link.deliver(self.remote, self.config.prefix, message)

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, correlation: bytes | None = None
    ) -> bool:
        """Publish at QoS 1 now (a reply, a config report); False if not connected."""
        client = self._client
        if client is None or not self.connected:
            return False
        try:
            client.send(topic, payload, 1, retain, correlation=correlation)
        except MqttError:
            return False
        return True

    def sync_now(self) -> None:
        """Look for records to send now, and publish a fresh status (the ``sync-now`` command)."""
        self._wake.set()
        self._status_now.set()

    # -- draining once (``edge-agent sync --once``) ----------------------------------------------

    async def drained(self, target: int) -> None:
        """Return once the cloud's ack covers ``target``."""
        while self.tracker.acked < target:
            await asyncio.sleep(0.05)


def _nothing() -> None:
    pass

"""One ingest worker's start: probe the broker, pick how to share the data, then ingest.

``edge-cloud serve`` runs this beside its HTTP server. Until the broker answers the probe, the
worker waits (with backoff) and says so in ``/api/stats``; once it has, the ingest starts with
the sharing mode ``sharing.plan`` chose, plus the JetStream feed when asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.backoff import Backoff
from cloud_sync.mqtt import MqttError, make_client, ssl_context
from cloud_sync.server import sharing
from cloud_sync.server.broker_probe import BrokerFeatures, probe
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.jetstream import JetStreamFeed

log = logging.getLogger(__name__)


class Worker:
    """The ingest, the broker's features, and the JetStream feed if there is one."""

    def __init__(self, ingest: Ingest, jetstream: list[str] | None = None, probe_broker: bool = True) -> None:
        self.ingest = ingest
        self.requested_group = ingest.share_group
        self.probe_broker = probe_broker
        self.feed: JetStreamFeed | None = None
        if jetstream:
            self.feed = JetStreamFeed(jetstream, ingest.feed, prefix=ingest.prefix,
                                      group=ingest.share_group or "edge-ingest", backlogged=ingest.backlogged)
        self._stopping = asyncio.Event()
        ingest.health_extra["sharing"] = {"mode": "starting", "group": self.requested_group}

    def stop(self) -> None:
        self._stopping.set()
        self.ingest.stop()
        if self.feed is not None:
            self.feed.stop()

    async def run(self) -> None:
        features = await self._probe() if self.probe_broker else BrokerFeatures()
        if self._stopping.is_set():
            return
        plan = sharing.plan(features, self.requested_group, self.feed is not None)
        self.ingest.share_group = plan.share_group
        self.ingest.mqtt_kinds = plan.mqtt_kinds
        extra = self.ingest.health_extra
        extra["sharing"] = {"mode": plan.mode, "group": self.requested_group, "warning": plan.warning}
        if plan.warning:
            log.warning("%s", plan.warning)
        log.info("sharing: %s", plan.mode)
        async with asyncio.TaskGroup() as group:
            if self.feed is not None:
                feed = self.feed
                extra["jetstream"] = feed.health()
                group.create_task(self._keep_feed_health(feed), name="ingest:jetstream-health")
                group.create_task(feed.run(), name="ingest:jetstream")
            await self.ingest.run()
            if self.feed is not None:
                self.feed.stop()
        if plan.mode == "mqtt-shared" and self._stopping.is_set():
            await self._leave_group()

    async def _leave_group(self) -> None:
        """End this worker's persistent session: a broker keeps handing a share of the group's
        messages to a member that is away, and nobody would read them until it came back (the
        devices would send them again after their ``resend_after``). A clean-session connect
        and disconnect drops it; a worker that crashed leaves it behind."""
        ingest = self.ingest
        client = make_client(ingest.login, ingest.client_id, "3.1.1", logger=log.getChild("mqtt"),
                             tls=ssl_context(ingest.login), clean=True)
        try:
            async with asyncio.timeout(5):
                async with client:
                    pass
            log.info("left the share group %s (session %s ended)", self.requested_group, ingest.client_id)
        except (MqttError, OSError, TimeoutError) as exc:
            log.warning("could not end the session %s: %s", ingest.client_id, exc)

    async def _probe(self) -> BrokerFeatures:
        ingest = self.ingest
        backoff = Backoff(first=0.5, cap=30.0)
        while not self._stopping.is_set():
            try:
                features = await probe(ingest.login, ingest.client_id, ingest.prefix, ingest.protocol_version)
            except (MqttError, OSError) as exc:
                ingest.health_extra["broker_features"] = {"probe": f"waiting for the broker: {exc}"}
                log.warning("cannot probe the broker %s: %s", ingest.login.url, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next_delay()):
                        await self._stopping.wait()
                continue
            ingest.health_extra["broker_features"] = {**features.as_dict(), "fallbacks": features.explain()}
            if features.protocol == "3.1.1":
                ingest.use_protocol("3.1.1")
            log.info("broker %s: %s", ingest.login.url, ", ".join(
                f"{k}={v}" for k, v in features.as_dict().items() if k != "notes"))
            for line in features.explain():
                log.warning("the broker %s", line)
            return features
        return BrokerFeatures()

    async def _keep_feed_health(self, feed: JetStreamFeed) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while not self._stopping.is_set():
                self.ingest.health_extra["jetstream"] = feed.health()
                await asyncio.sleep(1.0)

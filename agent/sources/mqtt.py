"""Readings from an MQTT broker (normally the gateway's local one)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from agent import codec
from agent.api import Record, Source, SourceContext
from agent.backoff import Backoff
from agent.config import MqttSourceConfig
from agent.counters import ThrottledLog
from agent.health.clock import CLOCK
from agent.sources.acks import AckLedger
from agent.sources.mqtt_wire import Message, MqttProtocolError, Session, SubscriberProtocol
from agent.sources.payload import Tally, build_mapper
from agent.sources.readings import NOT_JSON, OVERSIZED, Rejected, decode_reading, reading_from
from agent.sources.retained import RetainedMemory
from agent.sources.taken import TakenCount
from agent.topics import fixed_prefix, matches

log = logging.getLogger(__name__)


class MqttSource(Source[MqttSourceConfig]):
    """Subscribes to the configured topics with a persistent session and publishes each batch
    of readings on the bus; malformed payloads are counted by reason and dropped.

    Per message: topics in ``exclude`` (or that the format's preset knows carry no readings)
    are skipped and counted as ``excluded``; a retained message is taken per ``retained``
    (a repeat counted as ``retained_repeat``, a skipped one as ``retained_skipped``); the
    payload is then decoded as ``format`` says."""

    Config = MqttSourceConfig
    description = "Readings from an MQTT broker (normally the gateway's local one)."

    def __init__(self, config: MqttSourceConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        self.name = config.name
        self._counters = context.counters
        self._log = context.log
        self._bad_input = ThrottledLog(self._log)
        self._session = Session(
            client_id=config.client_id or f"{context.device_id}-{config.name}",
            subscriptions=tuple((topic, config.qos) for topic in config.topics),
            clean_session=not config.persistent_session,
            keepalive=max(1, round(config.keepalive)),
            username=config.username,
            password=(secret.get_secret_value() if (secret := config.password()) else None),
            max_payload=config.max_payload,
        )
        self._prefixes = [(topic, fixed_prefix(topic)) for topic in config.topics]
        self._sensors: dict[str, str] = {}
        self._topic_prefixes: dict[str, str] = {}
        self._max_skew = context.max_clock_skew
        self._mapper = build_mapper(config.format, config.payload, self._max_skew, self._prefix_of)
        self._excluded: dict[str, bool] = {}
        self._filtering = bool(config.exclude) or self._mapper is not None
        self._memory: RetainedMemory | None = None
        if config.retained == "once":  # the runner's memory outlives this instance
            memory = getattr(context, "retained", None)
            self._memory = memory if isinstance(memory, RetainedMemory) else RetainedMemory()
        self._protocol: SubscriberProtocol | None = None
        held = config.qos == 1 and config.ack == "checkpoint"
        self.acks = _ledger(context, f"source:{config.name}") if held else None
        """QoS 1 readings are acknowledged once a checkpoint covers them (``cut``)."""
        taken = getattr(context, "taken", None)
        self._taken = taken if isinstance(taken, TakenCount) and not held else None
        """Readings the broker will not deliver again (QoS 0, or acknowledged on receipt), counted
        so that a crash's loss of them is known (``agent/sources/taken.py``)."""
        self._resuming: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Stay connected until cancelled, reconnecting with backoff."""
        backoff = Backoff(first=0.5, cap=30.0)
        loop = asyncio.get_running_loop()
        while True:
            try:
                _, protocol = await loop.create_connection(
                    self._make_protocol, self.config.host, self.config.port, ssl=self._ssl_context()
                )
                self._protocol = protocol
                session_present = await asyncio.wait_for(protocol.ready, self.config.keepalive)
                self.context.report_ok()
                if self.acks is not None:
                    self.acks.connected(protocol, session_present)
                backoff.reset()
                self._log.info(
                    "subscribed to %s on %s (session %s)", ", ".join(self.config.topics),
                    self.config.url, "resumed" if session_present else "new",
                )
                await protocol.closed
                raise ConnectionResetError("the broker closed the connection")
            except (OSError, TimeoutError, MqttProtocolError, ssl.SSLError) as exc:
                if self._protocol:
                    self._protocol.abort()
                error = f"{self.config.url}: {exc}"
                self.context.report_error(error)
                self._counters.incr("connect_errors")
                delay = backoff.next_delay()
                self._log.warning("%s; reconnecting in %.1f s", error, delay)
                await asyncio.sleep(delay)

    def cut(self) -> Callable[[], None] | None:
        """A checkpoint is being taken: what releases the acknowledgements it covers."""
        return self.acks.cut() if self.acks is not None else None

    def owed_ids(self) -> list[int] | None:
        """The packet ids the last cut covers (saved with the checkpoint), or None."""
        return self.acks.last_cut if self.acks is not None else None

    def restore_owed(self, packet_ids: list[int]) -> None:
        if self.acks is not None:
            self.acks.restore(packet_ids)

    def pause(self) -> None:
        """Stop reading (before the last checkpoint of a shutdown); ``stop`` disconnects."""
        if self._protocol:
            self._protocol.pause_reading()

    async def stop(self) -> None:
        """Disconnect cleanly, so the broker keeps the session for our return."""
        if self._protocol:
            self._protocol.disconnect()

    def _make_protocol(self) -> SubscriberProtocol:
        if self.acks is not None:
            self.acks.connecting()
        return SubscriberProtocol(self._session, self._on_messages, self._on_oversized, self.acks)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        context = ssl.create_default_context(cafile=self.config.tls_ca)
        if self.config.tls_cert and self.config.tls_key:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    def _on_messages(self, messages: list[Message]) -> None:
        now = time.time()
        records: list[Record] = []
        if self._mapper is None and not self._filtering:
            self._readings(messages, now, records)
        else:
            self._mapped(messages, now, records)
        self._counters.incr("received", len(messages))
        if self._taken is not None and records:
            self._taken.add(len(records))
        if not CLOCK.synchronised:
            _mark_unsynced(records, now)
        if records and self.context.publish_nowait(records) and self._protocol:
            self._counters.incr("paused")
            self._protocol.pause_reading()
            if self._resuming is None or self._resuming.done():
                self._resuming = asyncio.create_task(self._resume_when_room(self._protocol))

    def _readings(self, messages: list[Message], now: float, records: list[Record]) -> None:
        """The agent's own payload shape: the hot path, kept lean (``decode_reading`` inline,
        the retained memory noted once a batch)."""
        sensors = self._sensors
        memory = self._memory
        latest: dict[str, bytes] = {}  # topic -> the last payload taken on it in this batch
        max_skew = self._max_skew
        loads = codec.loads
        for topic, payload, retain in messages:
            if retain:
                if memory is not None and latest:  # the memory up to date for its check
                    memory.note_all(latest)
                    latest = {}
                if self._retained_taken(topic, payload):
                    continue
            latest[topic] = payload
            sensor = sensors.get(topic)
            if sensor is None:
                sensor = self._sensor_of(topic)
            try:
                body = loads(payload)
            except (ValueError, UnicodeDecodeError):
                self._reject(NOT_JSON, topic, payload)
                continue
            try:
                records.append(reading_from(topic, sensor, body, now, max_skew))
            except Rejected as rejected:
                self._reject(rejected.reason, topic, payload)
        if memory is not None and latest:
            memory.note_all(latest)

    def _mapped(self, messages: list[Message], now: float, records: list[Record]) -> None:
        """Exclusions, then the format's mapping (or the agent's own shape)."""
        tally = Tally()
        mapper = self._mapper
        memory = self._memory
        excluded = 0
        for topic, payload, retain in messages:
            skip = self._excluded.get(topic)
            if skip is None:
                skip = self._is_excluded(topic)
            if skip:
                excluded += 1
                continue
            if retain and self._retained_taken(topic, payload):
                continue
            if memory is not None:
                memory.note(topic, payload)
            drops = tally.drops
            try:
                if mapper is None:
                    sensor = self._sensors.get(topic) or self._sensor_of(topic)
                    records.append(decode_reading(topic, sensor, payload, now, self._max_skew))
                else:
                    mapper.handle(topic, payload, now, records, tally)
            except Rejected as rejected:
                self._reject(rejected.reason, topic, payload)
            if tally.drops != drops:
                self._log_drop(tally.last_reason, topic, payload)
        self._count_tally(tally, excluded)

    def _count_tally(self, tally: Tally, excluded: int) -> None:
        counters = self._counters
        for name, count in (
            ("excluded", excluded + tally.excluded), ("fields_ignored", tally.fields_ignored),
            ("no_fields", tally.empty),
        ):
            if count:
                counters.incr(name, count)
        for reason, count in tally.dropped.items():
            self.context.reject(reason, count=count, received=False)  # logged by _log_drop

    def _retained_taken(self, topic: str, payload: bytes) -> bool:
        """Whether a retained message is to be skipped (and counted so)."""
        mode = self.config.retained
        if mode == "skip":
            self._counters.incr("retained_skipped")
            return True
        if mode == "once" and self._memory is not None and self._memory.repeat(topic, payload):
            self._counters.incr("retained_repeat")
            return True
        return False

    def _is_excluded(self, topic: str) -> bool:
        skip = any(matches(topic_filter, topic) for topic_filter in self.config.exclude)
        if not skip and self._mapper is not None:
            skip = self._mapper.excludes(topic)
        if len(self._excluded) > 100_000:
            self._excluded.clear()
        self._excluded[topic] = skip
        return skip

    async def _resume_when_room(self, protocol: SubscriberProtocol) -> None:
        await self.context.wait_room()
        protocol.resume_reading()

    def _on_oversized(self, topic: str, size: int) -> None:
        self._counters.incr("received")
        self._reject(OVERSIZED, topic, f"<{size} bytes>".encode())

    def _reject(self, reason: str, topic: str, payload: bytes) -> None:
        self.context.reject(reason, received=False)  # received is counted per message here
        self._log_drop(reason, topic, payload)

    def _log_drop(self, reason: str, topic: str, payload: bytes) -> None:
        self._bad_input.warning(
            reason, "dropped a reading on %s: %s; payload starts %r", topic, reason, payload[:64]
        )

    def _prefix_of(self, topic: str) -> str:
        """The fixed part of the subscription ``topic`` came by: the agent's own shape takes
        the rest as the sensor id; a mapped reading goes on ``<this><sensor>`` (docs/design/
        006-device-payloads.md), so a reading's topic is ``<prefix><sensor>`` whatever its source."""
        found = self._topic_prefixes.get(topic)
        if found is not None:
            return found
        found = next((prefix for topic_filter, prefix in self._prefixes
                      if matches(topic_filter, topic) and topic.startswith(prefix)), "")
        if len(self._topic_prefixes) > 100_000:
            self._topic_prefixes.clear()
        self._topic_prefixes[topic] = found
        return found

    def _sensor_of(self, topic: str) -> str:
        sensor = topic[len(self._prefix_of(topic)):] or topic
        if len(self._sensors) > 100_000:
            self._sensors.clear()
        self._sensors[topic] = sensor
        return sensor


def _ledger(context: SourceContext, scope: str) -> AckLedger:
    """The runner's ledger, which outlives this instance (a new one where there is none)."""
    ledger = getattr(context, "acks", None)
    return ledger if isinstance(ledger, AckLedger) else AckLedger(context.counters, scope)


def _mark_unsynced(records: list[Record], now: float) -> None:
    """Readings stamped by the gateway (no ts of their own: exactly ``now``) while its clock is
    not known to be right say so, for whoever reads them later."""
    for record in records:
        if record.ts == now:
            record.data["clock"] = "unsynced"

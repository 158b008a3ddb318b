"""The MQTT client both ends use: aiomqtt, plus the two things sync needs from it.

* ``send`` publishes without awaiting and returns a future for the PUBACK's reason code, so the
  uploader can keep a window of messages in flight and learn when the broker refused one
  (MQTT 5). aiomqtt's own ``publish`` awaits each message and drops the reason code.
* ``connack_properties``: the broker's limits (MQTT 5 Maximum Packet Size, Receive Maximum).
* Socket registration that survives a connection failing at once (see ``_watch``).
* ``read_retained``: a short synchronous look at a broker's retained messages (``$SYS``).

This is the one file that imports paho or aiomqtt (``tests/test_layers.py`` holds it to that):
the rest of the code takes the names it needs from here (``MqttError``, ``Message``, ``Will``,
``ReasonCode``). The version range in pyproject.toml pins the aiomqtt it was written against.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt import Message, MqttError, Will
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import BrokerLogin

__all__ = [
    "Client", "ClosedBeforeConnack", "Message", "MqttError", "ReasonCode", "Will", "make_client",
    "read_retained", "ssl_context", "wrong_protocol",
]

log = logging.getLogger(__name__)

# Without TCP_NODELAY, a PUBACK we send for an incoming ack holds our next PUBLISH back until
# the broker's delayed ACK (Nagle): the publish rate fell eightfold in our measurements.
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}
# CONNACK codes meaning "not this protocol version": 3.1.1's 1, MQTT 5's 0x84.
_WRONG_PROTOCOL = {1, 0x84}


class Client(aiomqtt.Client):
    """An aiomqtt client with a non-blocking ``send``; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self.connack_properties: Properties | None = None

    def send(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
        correlation: bytes | None = None, response_topic: str | None = None, expiry: float | None = None,
    ) -> asyncio.Future[ReasonCode]:
        """Publish now; the future resolves with the PUBACK's reason code (or fails when the
        connection is lost first). ``correlation``, ``response_topic`` and ``expiry`` (seconds)
        are MQTT 5 properties, left out on 3.1.1 (request/response puts them in the payload)."""
        properties = None
        if self._client.protocol == paho.MQTTv5 and (correlation or response_topic or expiry):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho
            if correlation:
                properties.CorrelationData = correlation
            if response_topic:
                properties.ResponseTopic = response_topic
            if expiry:
                properties.MessageExpiryInterval = max(1, round(expiry))
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        future.add_done_callback(_retrieve)  # a lost connection is handled elsewhere, not logged here
        if qos == 0 or info.is_published():
            future.set_result(ReasonCode(PacketTypes.PUBACK, identifier=0))
        else:
            self._acks[info.mid] = future
        return future

    @property
    def pending_sends(self) -> int:
        return len(self._acks)

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        self.connack_properties = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        if not self._connected.done():
            # Closed before any CONNACK: without this, the connect would wait out its timeout.
            self._connected.set_exception(ClosedBeforeConnack(self.protocol_name))
        self._loop.call_soon_threadsafe(self._fail_sends, reason_code)
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _fail_sends(self, reason_code: Any) -> None:
        acks, self._acks = self._acks, {}
        for future in acks.values():
            if not future.done():
                future.set_exception(aiomqtt.MqttError(f"connection lost before the PUBACK ({reason_code})"))

    # paho may open the socket and ask for write readiness on the thread running connect(), so the
    # event loop registration is scheduled with call_soon_threadsafe. When the connection fails
    # before that runs (a TLS alert right after the handshake), the descriptor is already closed,
    # or reused by the next attempt: aiomqtt's own callbacks then make the loop log an EBADF
    # traceback, or watch a socket that is not theirs. Ours register a socket only while it is
    # still the client's.
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.call_soon_threadsafe(self._watch, sock, sock.fileno(), self._loop.add_reader, self._read)
        self._loop.call_soon_threadsafe(self._start_misc_loop)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.call_soon_threadsafe(self._watch, sock, sock.fileno(), self._loop.add_writer, self._write)

    def _watch(self, sock: Any, fileno: int, add: Callable[..., object], ready: Callable[[], None]) -> None:
        if fileno < 0 or sock.fileno() != fileno or self._client.socket() is not sock:
            return  # closed (or replaced) before the loop got here
        add(fileno, ready)

    def _start_misc_loop(self) -> None:
        self._misc_task = self._loop.create_task(self._misc_loop())

    def _read(self) -> None:
        try:
            self._client.loop_read()
            # An SSL socket can hold decoded bytes that a single loop_read leaves behind.
            while (sock := self._client.socket()) is not None and getattr(sock, "pending", lambda: 0)() > 0:
                self._client.loop_read()
        except Exception as exc:  # a broken connection: end it the way aiomqtt does
            self._lost(exc)

    def _write(self) -> None:
        try:
            self._client.loop_write()
        except Exception as exc:
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        if not self._disconnected.done():
            self._disconnected.set_exception(exc)

    @property
    def max_packet_size(self) -> int | None:
        """The broker's Maximum Packet Size (MQTT 5), if it announced one."""
        props = self.connack_properties
        return getattr(props, "MaximumPacketSize", None) if props is not None else None

    @property
    def protocol_name(self) -> str:
        return "5" if self._client.protocol == paho.MQTTv5 else "3.1.1"


class ClosedBeforeConnack(aiomqtt.MqttError):
    """The broker closed the connection after our CONNECT without a CONNACK. That is how
    RabbitMQ 3.10 (and other 3.1.1-only brokers) answer an MQTT 5 CONNECT."""

    def __init__(self, protocol: str) -> None:
        super().__init__(f"the broker closed the connection without a CONNACK (MQTT {protocol})")
        self.protocol = protocol


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def ssl_context(login: BrokerLogin) -> ssl.SSLContext | None:
    """TLS when the URL is ``mqtts://`` or a CA is given; mutual TLS with ``tls_cert``/``tls_key``."""
    if not login.tls:
        return None
    context = ssl.create_default_context(cafile=str(login.tls_ca) if login.tls_ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if login.tls_cert and login.tls_key:
        context.load_cert_chain(str(login.tls_cert), str(login.tls_key))
    return context


def make_client(
    login: BrokerLogin,
    client_id: str,
    protocol: str,
    *,
    will: aiomqtt.Will | None = None,
    session_expiry: float = 0.0,
    inflight: int = 20,
    logger: logging.Logger | None = None,
    tls: ssl.SSLContext | None = None,
    max_packet: int | None = None,
    clean: bool = False,
) -> Client:
    """A client with a persistent session (``clean_start`` off, ``session_expiry`` on MQTT 5).
    ``max_packet`` (MQTT 5 Maximum Packet Size) makes the broker withhold anything larger: it
    never reaches this process's memory. ``clean`` (3.1.1): a clean session instead, which also
    drops the client id's old one."""
    v5 = protocol == "5"
    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
        properties.SessionExpiryInterval = int(min(session_expiry, 0xFFFFFFFF))
        if max_packet is not None:
            properties.MaximumPacketSize = max_packet
    secret = login.password()
    return Client(
        login.host,
        login.port,
        username=login.username,
        password=secret.get_secret_value() if secret else None,
        identifier=client_id,
        protocol=PROTOCOLS[protocol],
        clean_session=None if v5 else clean,
        clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
        will=will,
        keepalive=max(1, round(login.keepalive)),
        timeout=max(5.0, login.keepalive),
        max_inflight_messages=inflight,
        tls_context=tls,
        logger=logger or log,
        socket_options=NODELAY,
    )


def wrong_protocol(exc: BaseException) -> bool:
    """True if a failed connect says the broker does not speak the protocol version we tried: a
    CONNACK refusing it, or (after an MQTT 5 CONNECT) a connection closed without any CONNACK. A
    broker restarting at that very moment looks the same; 3.1.1 then works as well, minus the
    PUBACK reason codes."""
    if isinstance(exc, ClosedBeforeConnack):
        return exc.protocol == "5"
    if isinstance(exc, MqttConnectError):
        rc = getattr(exc, "rc", None)
        return getattr(rc, "value", rc) in _WRONG_PROTOCOL
    return False


def read_retained(
    login: BrokerLogin, client_id: str, topics: Sequence[str], timeout: float = 3.0
) -> dict[str, bytes] | None:
    """The retained messages on ``topics`` (exact names), with paho's own thread: one SUBSCRIBE
    in that order (the broker sends the retained messages filter by filter), waiting until the
    last topic's message came or ``timeout`` passed. ``None`` when the broker cannot be reached
    or sent nothing. For commands that ask once and exit, outside any event loop."""
    got: dict[str, bytes] = {}
    done = threading.Event()
    last = topics[-1]

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        got[message.topic] = bytes(message.payload)
        if message.topic == last:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-{os.getpid()}",
                         clean_session=True)
    if login.username:
        secret = login.password()
        client.username_pw_set(login.username, secret.get_secret_value() if secret else None)
    tls = ssl_context(login)
    if tls is not None:
        client.tls_set_context(tls)
    client.on_connect = lambda c, *_: c.subscribe([(topic, 0) for topic in topics])
    client.on_message = on_message
    try:
        client.connect(login.host, login.port, keepalive=max(5, round(timeout) + 5))
    except (OSError, ValueError):
        return None
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return got or None

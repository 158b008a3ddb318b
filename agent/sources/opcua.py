"""Readings from an OPC UA server by subscription: the server sends data-change notifications at
each node's sampling interval, nothing is polled.

asyncua (the ``opcua`` extra; LGPL-3.0-or-later, used unmodified as a library) is imported when
the source starts. Its own reconnection has been unreliable, so it is not used: when the server
stops answering, the source raises and the runner starts a new instance with a new client, after
a growing delay. Reading times are the server's timestamps (``timestamps = "source"`` takes the
device's, ``"receipt"`` the gateway's clock).
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.api import Record, Source, SourceConfig, SourceContext
from agent.extras import require
from agent.units import PositiveDuration


class NodeConfig(BaseModel):
    """One variable subscribed to."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    node_id: Annotated[str, Field(min_length=1)]
    """``ns=2;s=Line1.Temperature``, ``ns=3;i=1001``."""
    name: Annotated[str, Field(min_length=1)]
    """The sensor id."""
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    sampling_interval: PositiveDuration | None = None
    """This node's sampling interval, if not the source's."""


class OpcUaConfig(SourceConfig):
    """An OPC UA server and the nodes to subscribe to."""

    url: Annotated[str, Field(pattern=r"^opc\.tcp://[^\s]+$")]
    nodes: Annotated[list[NodeConfig], Field(min_length=1)]
    sampling_interval: PositiveDuration = 1.0
    """How often the server samples each node (it notifies only changes)."""
    publishing_interval: PositiveDuration = 1.0
    """How often the server sends the notifications it gathered."""
    timeout: PositiveDuration = 5.0
    keepalive: PositiveDuration = 5.0
    """The server is asked for its state this often; no answer within ``timeout`` is a lost link."""
    timestamps: Literal["server", "source", "receipt"] = "server"
    username: str | None = None
    password_env: str | None = None
    """An environment variable holding the password (never the password in the file)."""
    security: Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"] = "None"
    certificate: Path | None = None
    """The client's certificate (DER or PEM), for a security policy."""
    private_key: Path | None = None
    server_certificate: Path | None = None
    topic_prefix: str = "sensors/"

    @model_validator(mode="after")
    def _checked(self) -> OpcUaConfig:
        require("opcua", "type = 'opcua'")
        if self.security != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"security {self.security!r} needs certificate and private_key")
        if self.password_env and self.password_env not in os.environ:
            raise ValueError(f"password_env: environment variable {self.password_env} is not set")
        return self


class OpcUaSource(Source[OpcUaConfig]):
    """Subscribes to ``nodes`` and hands on every value the server notifies."""

    Config = OpcUaConfig
    description = "OPC UA nodes by subscription (asyncua, LGPL: the `opcua` extra)."

    def __init__(self, config: OpcUaConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        self._client: Any = None
        self._by_node: dict[str, NodeConfig] = {}

    async def run(self) -> None:
        from asyncua import ua
        from asyncua.client.client import Client

        config, context = self.config, self.context
        self._client = client = Client(config.url, timeout=config.timeout)
        if config.username:
            client.set_user(config.username)
            client.set_password(os.environ.get(config.password_env or "", ""))
        if config.security != "None":
            policy, mode = config.security.split("_")
            parts = [policy, mode, str(config.certificate), str(config.private_key)]
            if config.server_certificate:
                parts.append(str(config.server_certificate))
            await client.set_security_string(",".join(parts))
        await client.connect()
        context.report_ok()
        context.log.info("connected to %s", config.url)
        subscription = await client.create_subscription(config.publishing_interval * 1000, self)
        for interval in sorted({n.sampling_interval or config.sampling_interval for n in config.nodes}):
            group = [n for n in config.nodes if (n.sampling_interval or config.sampling_interval) == interval]
            handles = [client.get_node(n.node_id) for n in group]
            for node, spec in zip(handles, group, strict=True):
                self._by_node[node.nodeid.to_string()] = spec
            await subscription.subscribe_data_change(handles, sampling_interval=ua.Double(interval * 1000))
        state = client.nodes.server_state
        while True:
            await asyncio.sleep(config.keepalive)
            try:
                await asyncio.wait_for(state.read_value(), config.timeout)
            except (TimeoutError, OSError, ConnectionError) as exc:
                raise ConnectionError(f"{config.url}: the server does not answer ({exc!r})") from None

    async def stop(self) -> None:
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.disconnect(), 2.0)
            except Exception as exc:  # a server that is gone cannot be told goodbye
                self.context.log.debug("disconnect: %r", exc)

    # -- asyncua's subscription handler --------------------------------------------------------

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        spec = self._by_node.get(node.nodeid.to_string())
        if spec is None:
            return
        value = _number(val)
        if value is None:
            self.context.reject("value_not_a_number", f"{spec.name}: {val!r}")
            return
        record = self.context.reading(spec.name, value * spec.scale + spec.offset,
                                      ts=self._time_of(data), unit=spec.unit)
        if record is not None:
            self._hand_on([record])

    def status_change_notification(self, status: Any) -> None:
        self.context.fault("status_change", repr(status))

    def _time_of(self, data: Any) -> float | None:
        if self.config.timestamps == "receipt":
            return None
        value = data.monitored_item.Value
        stamp = value.ServerTimestamp if self.config.timestamps == "server" else value.SourceTimestamp
        stamp = stamp or value.ServerTimestamp or value.SourceTimestamp
        if stamp is None:
            return None
        if stamp.tzinfo is None:  # OPC UA times are UTC; some library versions give them naive
            stamp = stamp.replace(tzinfo=UTC)
        return float(stamp.timestamp())

    def _hand_on(self, records: list[Record]) -> None:
        if self.context.publish_nowait(records):
            self.context.counters.incr("bus_full")  # notifications keep coming: counted, kept


def _number(val: Any) -> float | None:
    if isinstance(val, bool):
        return float(val)
    if isinstance(val, int | float):
        return float(val)
    return None

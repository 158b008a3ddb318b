"""The agent config's sections: modules, buffer, cloud, supervisor, metrics, remote, and the whole."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    model_validator,
)

from agent.api import Module, ModuleConfig
from agent.config.base import BrokerLogin, DeviceId, MqttUrl, TopicFilter, _Section
from agent.config.sources import SourceEntry
from agent.extras import require
from agent.units import Duration, Name, PositiveDuration, Size


def _sync_shape(value: Any) -> Any:
    """One error for a ``sync`` that is neither a boolean nor a list, not one per union member."""
    if type(value) is bool or isinstance(value, list):
        return value
    raise ValueError(f"use true or false (a TOML boolean), not {value!r}")


class ModuleSpec(_Section):
    """One ``[[modules]]`` entry: which module to run, on what, and where its output goes."""

    name: Name
    use: Annotated[str, Field(min_length=1)]
    inputs: list[TopicFilter] | dict[Name, TopicFilter]
    """Topic filters of sources and module streams to read; ``[]`` for a producer, a module
    that makes its records itself (from ``context.every`` or ``start``)."""
    sync: Annotated[StrictBool | list[Name], BeforeValidator(_sync_shape)] = False
    """Commit the module's output to the outbox: ``true`` for every output, or the outputs to
    sync by name (``["alerts"]``; ``"default"`` is the module's own stream)."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    queue: Annotated[int, Field(ge=1, le=10_000_000)] = 20_000
    """Records that may wait for this module; when full, the sources wait (backpressure)."""
    isolation: Literal["in-process", "process"] = "in-process"
    """``process`` runs the module in a child process of its own: a crash, a hang or a leak
    ends only that process, which is restarted (records cross a pipe: slower per record)."""
    max_rss: Size | None = None
    """With ``isolation = "process"``: the child's resident memory above which it is killed
    and restarted ("200MB")."""

    @model_validator(mode="after")
    def _rss_needs_a_process(self) -> ModuleSpec:
        if self.max_rss is not None and self.isolation != "process":
            raise ValueError('max_rss applies to isolation = "process" only')
        return self

    @property
    def filters(self) -> list[str]:
        """The topic filters the module reads, named or not."""
        return list(self.inputs.values()) if isinstance(self.inputs, dict) else list(self.inputs)

    @property
    def named_inputs(self) -> dict[str, str]:
        """Input name to topic filter (``inputs = {temp = "sensors/+/temp"}``); empty for a list."""
        return dict(self.inputs) if isinstance(self.inputs, dict) else {}


class BufferConfig(_Section):
    """The outbox: what it may hold and how often it commits."""

    max_bytes: Size = 500_000_000
    overflow: Literal["drop_oldest"] = "drop_oldest"
    commit_interval: Duration = 0.25
    """Accepted records are committed at least this often (and on shutdown)."""
    commit_records: Annotated[int, Field(ge=1)] = 5000
    """...or as soon as this many are waiting."""
    min_free: Size = 32_000_000
    """Free space kept on the data directory's file system: below it, new records are refused
    (counted as ``dropped.disk_low``) so that the file system never fills up; 0 turns it off."""


def _check_compression(value: str) -> str:
    if value == "zstd":
        require("zstd", "compression 'zstd'", ("zstandard",))
    return value


class CloudConfig(BrokerLogin):
    """The cloud broker that summaries are synced to, and how the uploader paces itself.

    Sizes are bytes ("256kB"), durations seconds ("500ms", "15s"). See docs/protocol.md."""

    # A list (a tuple once read) names the nodes of a clustered broker; the uploader uses one at a
    # time and moves to the next when it cannot connect or the link drops (docs/scale.md).
    url: MqttUrl | Annotated[tuple[MqttUrl, ...], Field(min_length=1, max_length=16)]  # type: ignore[assignment]
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}(/[A-Za-z0-9_-]{1,32}){0,3}$")] = "edge"
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    """MQTT version: ``auto`` tries 5 and falls back to 3.1.1 when the broker refuses it."""
    session_expiry: Duration = 7 * 86400.0
    """MQTT 5: how long the broker keeps the device's session while it is away."""
    batch_records: Annotated[int, Field(ge=1, le=100_000)] = 1000
    batch_bytes: Annotated[Size, Field(ge=1024, le=8 << 20)] = 512_000
    """Bound on a batch's records before compression."""
    batch_delay: Duration = 0.5
    """A batch that is not full waits at most this long for more records."""
    max_message_bytes: Annotated[Size, Field(ge=1024)] = 256_000
    """The largest payload sent (after compression); set it at or below the broker's limit
    (Mosquitto ``message_size_limit``). A record that alone does not fit is set aside."""
    compression: Annotated[Literal["auto", "zstd", "zlib", "none"], AfterValidator(_check_compression)] = (
        "auto"
    )
    """``auto``: zstd when the ``zstandard`` package is installed, zlib otherwise."""
    window: Annotated[int, Field(ge=1, le=1000)] = 16
    """Messages published and not yet acknowledged by the broker, at most."""
    unacked_records: Annotated[int, Field(ge=1)] = 100_000
    """Records sent and not yet covered by the cloud's ack, at most."""
    resend_after: PositiveDuration = 15.0
    """What the cloud has not acknowledged this long after sending (or after its ack last moved,
    if later) is sent again."""
    backlog_rate_bytes: Size = 2_000_000
    """After an outage, the backlog is sent at most this many bytes per second (0: no limit);
    records made since the reconnect go first, unthrottled."""
    backlog_rate_messages: Annotated[float, Field(ge=0)] = 50.0
    """...and at most this many messages per second (0: no limit)."""
    heartbeat: PositiveDuration = 30.0
    """The retained status is published on connect and at this interval."""
    reconnect_min: PositiveDuration = 1.0
    reconnect_max: PositiveDuration = 60.0
    """Reconnect delays grow from ``reconnect_min`` to this, with full jitter."""

    @model_validator(mode="after")
    def _one_scheme(self) -> CloudConfig:
        if len({urlsplit(url).scheme for url in self.urls}) > 1:
            raise ValueError("url: every node of the list uses the same scheme (all mqtt:// or all mqtts://)")
        return self

    @property
    def urls(self) -> tuple[str, ...]:
        """The broker nodes, in the order they are tried."""
        return (self.url,) if isinstance(self.url, str) else self.url

    def node(self, index: int) -> CloudConfig:
        """This config with ``url`` the node at ``index`` (modulo the number of nodes)."""
        urls = self.urls
        return self if isinstance(self.url, str) else self.model_copy(update={"url": urls[index % len(urls)]})

    @property
    def host(self) -> str:
        return urlsplit(self.urls[0]).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.urls[0])
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return any(urlsplit(url).scheme == "mqtts" for url in self.urls) or self.tls_ca is not None


class SupervisorConfig(_Section):
    """How the runtime guards against misbehaving modules."""

    hang_timeout: PositiveDuration = 5.0
    """A module step that holds the event loop longer is reported as hung and interrupted."""
    restart_after_errors: Annotated[int, Field(ge=1)] = 10
    """A module that raises this many times in a row is restarted..."""
    restart_backoff_max: PositiveDuration = 60.0
    """...with a delay that doubles from one second up to this."""
    stop_timeout: PositiveDuration = 8.0
    """Shutdown budget: sources stop, modules flush, the outbox commits within this."""


def _check_listen(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: use HOST:PORT, e.g. 127.0.0.1:9464")
    return value


class MetricsConfig(_Section):
    """The Prometheus endpoint (off unless this section is present)."""

    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:9464"
    """HOST:PORT; keep it on 127.0.0.1 unless a firewall guards the port."""

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _check_public_key(path: Path) -> Path:
    from cloud_sync.signing import load_public_key  # needs the `signing` extra

    load_public_key(path)
    return path


class RemoteSettings(_Section):
    """Control from the cloud over the ``[cloud]`` connection (off unless this section is
    present). Only the operator's file sets it: a remote config cannot change it."""

    allow_config: StrictBool = False
    """Run the desired config the cloud publishes (validated, persisted, rolled back if it fails)."""
    allow_commands: StrictBool = True
    """Answer commands (ping, status, sync-now, restart-module, set-log-level)."""
    public_key_file: Annotated[Path, AfterValidator(_check_public_key)] | None = None
    """An Ed25519 public key (PEM): with it, only configs signed by its private key are run."""
    grace_period: PositiveDuration = 30.0
    """A new remote config whose modules crash, or whose [cloud] cannot connect, within this
    long is rolled back to the last good config."""
    allow_module_files: StrictBool = False
    """With ``public_key_file``: a signed config may name module files by absolute path
    (``/opt/x.py:Class``), imported on the device. Unsigned configs never may."""

    @model_validator(mode="after")
    def _files_need_signing(self) -> RemoteSettings:
        if self.allow_module_files and self.public_key_file is None:
            raise ValueError("allow_module_files needs public_key_file: only signed configs may name files")
        return self


class AgentConfig(_Section):
    """The whole agent config file."""

    device_id: DeviceId
    data_dir: Path
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_clock_skew: Duration = 86400.0
    """A reading time further than this ahead of the gateway's clock is refused as ``bad_ts``
    (a millisecond timestamp read as seconds is a date in the year 55,800)."""
    sources: list[SourceEntry] = Field(default_factory=list)
    modules: list[ModuleSpec] = Field(default_factory=list)
    buffer: BufferConfig = BufferConfig()
    cloud: CloudConfig | None = None
    supervisor: SupervisorConfig = SupervisorConfig()
    metrics: MetricsConfig | None = None
    remote: RemoteSettings | None = None


@dataclass(frozen=True)
class ModulePlan:
    """A module entry with its class resolved and its ``with`` table validated."""

    spec: ModuleSpec
    cls: type[Module[Any]]
    config: ModuleConfig


@dataclass(frozen=True)
class LoadedConfig:
    path: Path
    agent: AgentConfig
    modules: list[ModulePlan]

"""The agent config: TOML, environment overrides, and validation in two stages.

Stage one checks the agent's own sections against ``AgentConfig``; stage two checks each
module's ``with`` table against that module's own ``Config``. Both stages always run, so
``edge-agent check`` reports every problem of a file at once.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from agent.api import Module, ModuleConfig, Source, SourceConfig
from agent.config_errors import cross_checks, issues_from, named
from agent.errors import ConfigError, ConfigIssue, ModuleLoadError
from agent.extras import require
from agent.registry import resolve_module, resolve_source
from agent.sources.payload.config import Format, PayloadConfig
from agent.topics import validate_filter
from agent.units import Duration, Name, PositiveDuration, Size
from agent.wiring import check_wiring

ENV_PREFIX = "EDGE_AGENT__"

DeviceId = Name
TopicFilter = Annotated[str, AfterValidator(validate_filter)]


def _check_mqtt_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:  # first, so that no message below repeats it
        raise ValueError("put no password in the URL: use password_env or password_file")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{url!r}: use mqtt://host:port or mqtts://host:port")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number or out of range
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return url


MqttUrl = Annotated[str, AfterValidator(_check_mqtt_url)]


class _Section(BaseModel):
    # defer_build: a nested section is validated inside its parent and never needs a validator
    # (and serializer) of its own, which would stay in the daemon's memory for nothing.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class BrokerLogin(_Section):
    """Where and how to reach an MQTT broker. Secrets come from the environment or a file."""

    url: MqttUrl
    username: str | None = None
    password_env: str | None = None
    """Name of an environment variable that holds the password."""
    password_file: Path | None = None
    """A file whose first line is the password (keep it mode 600)."""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive: PositiveDuration = 30.0

    @model_validator(mode="after")
    def _secrets_resolve(self, info: ValidationInfo) -> BrokerLogin:
        if self.password_env and self.password_file:
            raise ValueError("set password_env or password_file, not both")
        if (info.context or {}).get("resolve_secrets", True):  # the console checks elsewhere
            self.password()  # fail now, not at the first connect
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        return self

    def password(self) -> SecretStr | None:
        if self.password_env:
            if self.password_env not in os.environ:
                raise ValueError(f"password_env: environment variable {self.password_env} is not set")
            return SecretStr(os.environ[self.password_env])
        if self.password_file:
            try:
                return SecretStr(self.password_file.read_text().splitlines()[0])
            except (OSError, IndexError) as exc:
                raise ValueError(f"password_file: cannot read {self.password_file}: {exc}") from None
        return None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts" or self.tls_ca is not None


class MqttSourceConfig(BrokerLogin, SourceConfig):
    """Readings from an MQTT broker, normally the gateway's local one."""

    type: Literal["mqtt"]
    name: Name
    url: MqttUrl = "mqtt://127.0.0.1:1883"
    topics: Annotated[list[TopicFilter], Field(min_length=1)] = ["sensors/#"]
    qos: Literal[0, 1] = 1
    client_id: str | None = None
    """Defaults to ``<device_id>-<source name>``; keep it stable so the session persists."""
    persistent_session: StrictBool = True
    """Keep the broker session across restarts, so QoS 1 readings sent meanwhile arrive later."""
    max_payload: Size = 65536
    """Readings with a larger payload are dropped and counted as ``oversized``."""
    exclude: list[TopicFilter] = []
    """Topics skipped before decoding (status, last wills, discovery), counted as ``excluded``."""
    format: Format = "reading"
    """What the payloads are: ``reading`` (the agent's own ``{"value"}`` shape), ``json`` (mapped
    by ``[sources.payload]``) or a firmware's preset (docs/sources/)."""
    retained: Literal["once", "always", "skip"] = "once"
    """Retained messages: ``once`` takes each the first time only (also across reconnects and
    restarts), ``always`` every time the broker delivers it, ``skip`` never."""
    payload: PayloadConfig | None = None
    """The mapping of ``format = "json"``; with a preset, only ``timezone`` and ``units``."""

    @model_validator(mode="before")
    @classmethod
    def _preset_topics(cls, data: Any) -> Any:
        from agent.sources.payload import DEFAULT_TOPICS  # import cycle

        if isinstance(data, dict) and "topics" not in data and data.get("format") in DEFAULT_TOPICS:
            data = {**data, "topics": DEFAULT_TOPICS[data["format"]]}
        return data

    @model_validator(mode="after")
    def _payload_fits_format(self) -> MqttSourceConfig:
        from agent.sources.payload import PRESET_KEYS  # import cycle

        if self.format == "sparkplug_b":
            require("sparkplug", 'format = "sparkplug_b"', ("google.protobuf",))
        if self.payload is None or self.format == "json":
            return self
        if self.format == "reading":
            raise ValueError('[sources.payload] goes with format = "json" or a preset, not "reading"')
        fixed = sorted(self.payload.model_fields_set - PRESET_KEYS)
        if fixed:
            raise ValueError(
                f"format = {self.format!r} fixes the mapping; its [sources.payload] may set only "
                f"{' and '.join(sorted(PRESET_KEYS))}, not {', '.join(fixed)}"
            )
        return self
    ack: Literal["checkpoint", "receipt"] = "checkpoint"
    """When a QoS 1 reading is acknowledged to the broker: once the checkpoint holding its
    effect has committed (exactly once across a crash of the agent), or on receipt (faster; a
    crash loses what the agent held in memory)."""


class SimulatorSourceConfig(SourceConfig):
    """Synthetic readings, for trying the agent with no hardware."""

    type: Literal["simulator"]
    name: Name
    topic_prefix: str = "sensors/"
    sensors: Annotated[int, Field(ge=1, le=100_000)] = 4
    rate: Annotated[float, Field(gt=0, le=100_000)] = 1.0
    """Readings per second for each sensor."""
    seed: int | None = None


def _validate_source(raw: Any, info: ValidationInfo) -> SourceConfig:
    """A ``[[sources]]`` entry, checked against the ``Config`` of the source its ``type`` names
    (registered or ``path/to/file.py:Class``); the errors keep their place in the entry."""
    if isinstance(raw, SourceConfig):
        return raw
    if not isinstance(raw, dict):
        raise ValueError("each [[sources]] entry is a table")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise _type_error("required" if kind is None else "a source type name", kind)
    resolve: SourceResolver = (info.context or {}).get("resolve_source") or resolve_source
    try:
        cls = resolve(kind)
    except ModuleLoadError as exc:
        raise _type_error(exc.reason, kind) from None
    config = cls.Config.model_validate(raw, context=info.context)
    _SOURCE_CLASSES[type(config)] = cls
    return config


_SOURCE_CLASSES: dict[type[SourceConfig], type[Source[Any]]] = {}


def source_class(config: SourceConfig) -> type[Source[Any]]:
    """The source class whose ``Config`` validated ``config`` (nothing is imported again)."""
    return _SOURCE_CLASSES[type(config)]


def _type_error(reason: str, value: Any) -> ValidationError:
    return ValidationError.from_exception_data("source", [
        {"type": "value_error", "loc": ("type",), "input": value, "ctx": {"error": ValueError(reason)}}
    ])


SourceEntry = Annotated[SourceConfig, PlainValidator(_validate_source)]
"""A ``[[sources]]`` entry, validated as the ``Config`` of its ``type``."""


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
    compression: Annotated[
        Literal["auto", "zstd", "zlib", "none"], AfterValidator(_check_compression)
    ] = "auto"
    """``auto``: zstd when the ``zstandard`` package is installed, zlib otherwise."""
    window: Annotated[int, Field(ge=1, le=1000)] = 16
    """Messages published and not yet acknowledged by the broker, at most."""
    unacked_records: Annotated[int, Field(ge=1)] = 100_000
    """Records sent and not yet covered by the cloud's ack, at most."""
    resend_after: PositiveDuration = 15.0
    """What the cloud has not acknowledged this long after sending is sent again."""
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


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, override from the environment, and validate; raise ``ConfigError`` with every issue."""
    path = Path(path)
    return validate_config(_read_toml(path), path, environ=environ)


def parse_config_text(text: str, label: str) -> dict[str, Any]:
    """TOML text as a dict; ``ConfigError`` (with ``label`` as the file) if it does not parse."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(label, "", f"not valid TOML: {exc}")]) from None


def validate_config(
    raw: dict[str, Any],
    path: Path,
    label: str | None = None,
    environ: Mapping[str, str] | None = None,
    resolve_secrets: bool = True,
    resolve: Resolver | None = None,
    resolve_type: SourceResolver | None = None,
) -> LoadedConfig:
    """Both stages of validation on a parsed config, every issue collected (``edge-agent check``
    and a remote config go through here alike). ``path`` is the operator's file (relative paths
    are relative to its folder); issues name ``label`` (default: the path) as their file.
    ``resolve`` finds each module's class (default: ``resolve_module``, which imports module
    files): a config from elsewhere passes one that imports nothing it names; ``resolve_type``
    does the same for each source's ``type``."""
    file = label or str(path)
    base = path.parent
    _apply_env_overrides(raw, os.environ if environ is None else environ)
    issues = cross_checks(file, raw)
    agent = None
    try:
        agent = AgentConfig.model_validate(raw, context={
            "resolve_secrets": resolve_secrets,
            "resolve_source": resolve_type or (lambda kind: resolve_source(kind, base)),
        })
    except ValidationError as exc:
        issues += issues_from(file, "", exc, AgentConfig, raw, _source_model(base))
    if resolve is None:
        resolve = lambda use: resolve_module(use, base)  # noqa: E731
    plans = _validate_modules(file, raw.get("modules"), issues, resolve)
    if agent is not None and len(plans) == len(agent.modules):  # else names would be missing
        issues += check_wiring(file, agent.sources, plans)
    if issues or agent is None:
        raise ConfigError(named(issues, raw))
    if not agent.data_dir.is_absolute():
        agent = agent.model_copy(update={"data_dir": Path(os.path.normpath(path.parent / agent.data_dir))})
    return LoadedConfig(path=path, agent=agent, modules=plans)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), "", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(str(path), "", f"not valid TOML: {exc}")]) from None


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """``EDGE_AGENT__BUFFER__MAX_BYTES=1GB`` sets ``buffer.max_bytes``; a number in the path
    indexes a list (``EDGE_AGENT__SOURCES__0__URL``). Values are read as TOML when they parse."""
    for key, value in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        *parents, leaf = [part.lower() for part in key[len(ENV_PREFIX):].split("__")]
        node: Any = raw
        for part in parents:
            if isinstance(node, list):
                node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            else:
                node = node.setdefault(part, {})
            if node is None:
                break
        if isinstance(node, dict):
            node[leaf] = _env_value(value)


def _env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


Resolver = Callable[[str], type[Module[Any]]]
"""A module's class from its ``use`` value, or ``ModuleLoadError`` saying why not."""
SourceResolver = Callable[[str], type[Source[Any]]]
"""A source's class from its ``type`` value, or ``ModuleLoadError`` saying why not."""


def _source_model(base: Path) -> Callable[[Any, Any], Any]:
    """For an error's nearest-key hint: a source entry's own ``Config``, by its ``type``."""
    def narrow(node: Any, raw: Any) -> Any:
        if node is not SourceEntry or not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            return node
        try:
            return resolve_source(raw["type"], base).Config
        except ModuleLoadError:
            return node
    return narrow


def _validate_modules(
    file: str, raw_modules: Any, issues: list[ConfigIssue], resolve: Resolver
) -> list[ModulePlan]:
    plans: list[ModulePlan] = []
    if not isinstance(raw_modules, list):
        return plans
    for index, entry in enumerate(raw_modules):
        if not isinstance(entry, dict) or not isinstance(entry.get("use"), str):
            continue  # stage one reports the shape
        where = f"modules[{index}]"
        try:
            cls = resolve(entry["use"])
        except ModuleLoadError as exc:
            issues.append(ConfigIssue(file, f"{where}.use", exc.reason))
            continue
        try:
            config = cls.Config.model_validate(entry.get("with", {}))
        except ValidationError as exc:
            issues += issues_from(file, f"{where}.with", exc, cls.Config, entry.get("with"))
            continue
        try:
            spec = ModuleSpec.model_validate(entry)
        except ValidationError:
            continue  # reported by stage one
        plans.append(ModulePlan(spec=spec, cls=cls, config=config))
    return plans

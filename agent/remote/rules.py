"""How a desired config from the cloud is checked: exactly as ``edge-agent check`` checks a file
(both stages, every issue), plus the rules that keep the operator's file in charge of the device.

* ``device_id``, ``data_dir``, ``[remote]``, ``[metrics]`` and ``[buffer]`` come from the
  operator's file. A document may leave them out (they are taken from the file) or repeat them
  unchanged; a different value is an issue.
* A credential (``password_env``, ``password_file``, ``tls_key``) may be named only together
  with the broker URL, user name, client certificate and CA the operator's file names it with,
  so a document cannot send the device's password or key to another broker, nor over plain TCP
  (dropping ``tls_ca``), nor to a broker a CA of its choosing vouches for.
* ``[cloud]`` left out is the operator's ``[cloud]``: a document cannot cut the device off from
  the cloud (a changed one that does not connect is rolled back).
* A module is named by its registered name; a module *file* (``path/x.py:Class``) only if the
  operator's file already loads that same ``use`` (its class is reused: nothing is imported
  again), or if the document is signed and the operator's file sets ``[remote]
  allow_module_files`` (then an absolute path, imported on the device). Any other value naming
  a file is refused *before* anything is resolved: no file named by an unchecked document is
  ever opened, let alone imported, and the refusal says nothing about the file system. A
  source ``type`` follows the same rule.
* An ``exec`` source runs only a command (with its environment and folder) that an ``exec``
  source of the operator's file runs: a document cannot make the device run a program.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.api import Module, Source
from agent.config import (
    AgentConfig,
    BrokerLogin,
    BufferConfig,
    LoadedConfig,
    MetricsConfig,
    MqttSourceConfig,
    RemoteSettings,
    Resolver,
    SourceResolver,
    parse_config_text,
    source_class,
    validate_config,
)
from agent.errors import ConfigError, ConfigIssue, ModuleLoadError
from agent.registry import (
    names_a_file,
    parse_file_use,
    resolve_module,
    resolve_registered,
    resolve_registered_source,
    resolve_source,
)
from agent.sources.exec import ExecConfig
from cloud_sync.protocol import DesiredConfig

LOCAL_ONLY = ("device_id", "data_dir", "remote", "metrics", "buffer")
_Binding = tuple[str, str | None, str | None, str | None, str | None, str | None, str | None]


def label(doc: DesiredConfig) -> str:
    """What a remote config's issues name as their file."""
    return f"config v{doc.version}"


def validate_remote(
    doc: DesiredConfig, file_loaded: LoadedConfig, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """The config ``doc`` carries, ready to run beside ``file_loaded`` (the operator's file);
    ``ConfigError`` with every issue otherwise."""
    where = label(doc)
    raw = parse_config_text(doc.config, where)
    local = file_loaded.agent
    issues = _local_only(raw, local, file_loaded.path.parent, where)
    raw.setdefault("device_id", local.device_id)
    raw.setdefault("data_dir", str(local.data_dir))
    loaded = None
    try:
        loaded = validate_config(
            raw, file_loaded.path, where, environ, resolve=module_resolver(file_loaded),
            resolve_type=source_resolver(file_loaded),
        )
    except ConfigError as exc:
        issues = exc.issues + issues
    if loaded is not None:
        issues += _credentials(loaded.agent, local, where) + _commands(loaded.agent, local, where)
    if issues or loaded is None:
        raise ConfigError(issues)
    update = {key: getattr(local, key) for key in LOCAL_ONLY}
    if loaded.agent.cloud is None:
        update["cloud"] = local.cloud  # without [cloud] the device would cut itself off for good
    agent = loaded.agent.model_copy(update=update)
    return LoadedConfig(path=file_loaded.path, agent=agent, modules=loaded.modules)


_SECTIONS: dict[str, type[BaseModel]] = {
    "remote": RemoteSettings, "metrics": MetricsConfig, "buffer": BufferConfig,
}
LOCAL_ONLY_REASON = "set by the operator's file only: it cannot change remotely"


def _local_only(raw: dict[str, Any], local: AgentConfig, base: Path, where: str) -> list[ConfigIssue]:
    """The operator's keys a document repeats with another value (a value that is not valid at
    all is left to validation to report)."""
    changed = []
    for key in (k for k in LOCAL_ONLY if k in raw):
        value = raw[key]
        if key == "device_id":
            different = value != local.device_id
        elif key == "data_dir":
            different = not isinstance(value, str) or base / value != local.data_dir
        else:
            try:
                different = _SECTIONS[key].model_validate(value) != getattr(local, key)
            except ValidationError:
                continue
        if different:
            changed.append(ConfigIssue(where, key, LOCAL_ONLY_REASON))
    return changed


MODULE_FILE_REASON = (
    "a remote config names modules by their registered name; a module file only where the "
    "operator's file loads the same one (or, signed, with [remote] allow_module_files)"
)


def module_resolver(file_loaded: LoadedConfig) -> Resolver:
    """How a remote config's ``use`` values are resolved: never by importing a file the
    operator's file does not already load (unless signed documents may name files)."""
    operator: dict[str, type[Module[Any]]] = {plan.spec.use: plan.cls for plan in file_loaded.modules}
    remote = file_loaded.agent.remote
    files_allowed = bool(remote and remote.allow_module_files and remote.public_key_file is not None)

    def resolve(use: str) -> type[Module[Any]]:
        if use in operator:
            return operator[use]
        if not names_a_file(use):
            return resolve_registered(use)
        file_use = parse_file_use(use)
        if files_allowed and file_use is not None and Path(file_use.file).is_absolute():
            return resolve_module(use)
        raise ModuleLoadError(use, MODULE_FILE_REASON)

    return resolve


def source_resolver(file_loaded: LoadedConfig) -> SourceResolver:
    """How a remote config's source ``type`` values are resolved: as ``use`` values are."""
    operator = {source.type: source_class(source) for source in file_loaded.agent.sources}
    remote = file_loaded.agent.remote
    files_allowed = bool(remote and remote.allow_module_files and remote.public_key_file is not None)

    def resolve(kind: str) -> type[Source[Any]]:
        if kind in operator:
            return operator[kind]
        if not names_a_file(kind):
            return resolve_registered_source(kind)
        file_use = parse_file_use(kind)
        if files_allowed and file_use is not None and Path(file_use.file).is_absolute():
            return resolve_source(kind)
        raise ModuleLoadError(kind, SOURCE_FILE_REASON)

    return resolve


SOURCE_FILE_REASON = (
    "a remote config names sources by their registered name; a source file only where the "
    "operator's file loads the same one (or, signed, with [remote] allow_module_files)"
)


COMMAND_REASON = "a remote config may run only a command the operator's file runs (same command, env and cwd)"


def _commands(remote: AgentConfig, local: AgentConfig, where: str) -> list[ConfigIssue]:
    def runs(config: AgentConfig) -> list[tuple[int, Any]]:
        return [(index, (tuple(source.command), tuple(sorted(source.env.items())), source.cwd))
                for index, source in enumerate(config.sources) if isinstance(source, ExecConfig)]

    allowed = {command for _, command in runs(local)}
    return [ConfigIssue(where, f"sources[{index}].command", COMMAND_REASON)
            for index, command in runs(remote) if command not in allowed]


def _binding(login: BrokerLogin) -> _Binding:
    return (
        login.url, login.username, login.password_env,
        str(login.password_file) if login.password_file else None,
        str(login.tls_cert) if login.tls_cert else None,
        str(login.tls_key) if login.tls_key else None,
        str(login.tls_ca) if login.tls_ca else None,  # no downgrade to plain TCP, no CA swap
    )


def _logins(config: AgentConfig) -> list[tuple[str, BrokerLogin]]:
    logins: list[tuple[str, BrokerLogin]] = [("cloud", config.cloud)] if config.cloud else []
    logins += [
        (f"sources[{index}]", source)
        for index, source in enumerate(config.sources) if isinstance(source, MqttSourceConfig)
    ]
    return logins


def _credentials(remote: AgentConfig, local: AgentConfig, where: str) -> list[ConfigIssue]:
    bound = {_binding(login) for _, login in _logins(local)}
    issues = []
    for path, login in _logins(remote):
        secret = next(
            (key for key in ("password_env", "password_file", "tls_key") if getattr(login, key)), None
        )
        if secret is not None and _binding(login) not in bound:
            issues.append(ConfigIssue(
                where, f"{path}.{secret}",
                "a remote config may use a credential only with the broker URL, username, "
                "certificate and CA that the operator's file uses it with",
            ))
    return issues

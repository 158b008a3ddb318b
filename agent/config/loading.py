"""The agent config: TOML, environment overrides, and validation in two stages.

Stage one checks the agent's own sections against ``AgentConfig``; stage two checks each
module's ``with`` table against that module's own ``Config``. Both stages always run, so
``edge-agent check`` reports every problem of a file at once.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from agent.config.base import Resolver, SourceResolver
from agent.config.sections import AgentConfig, LoadedConfig, ModulePlan, ModuleSpec
from agent.config.sources import SourceEntry
from agent.config_errors import cross_checks, issues_from, named
from agent.errors import ConfigError, ConfigIssue, ModuleLoadError
from agent.registry import resolve_module, resolve_source
from agent.wiring import check_wiring

ENV_PREFIX = "EDGE_AGENT__"


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
        agent = AgentConfig.model_validate(
            raw,
            context={
                "resolve_secrets": resolve_secrets,
                "resolve_source": resolve_type or (lambda kind: resolve_source(kind, base)),
            },
        )
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
        *parents, leaf = [part.lower() for part in key[len(ENV_PREFIX) :].split("__")]
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

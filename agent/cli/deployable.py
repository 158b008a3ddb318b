"""``check --deployable``: a valid config that still holds a template's placeholder addresses."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agent.config import AgentConfig
from agent.errors import ConfigIssue

RESERVED = ("example", "invalid", "test", "example.com", "example.net", "example.org")
"""Names reserved for examples (RFC 2606, 6761): never a real broker, always a template's."""


def placeholders(file: str, config: AgentConfig) -> list[ConfigIssue]:
    """Addresses a config copied from a template still has: a valid config that cannot work."""
    where: list[tuple[str, Any]] = [("cloud.url", config.cloud.url)] if config.cloud else []
    where += [(f"sources[{i}].url", getattr(s, "url", None)) for i, s in enumerate(config.sources)]
    issues = []
    for path, url in where:
        host = ((urlsplit(url).hostname or "") if isinstance(url, str) else "").rstrip(".")
        if any(host == name or host.endswith("." + name) for name in RESERVED):
            issues.append(ConfigIssue(file, path, f"{host} is a placeholder (a name reserved for examples): "
                                                  "put your broker's address here"))
    return issues

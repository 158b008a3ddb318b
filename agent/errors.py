"""The agent's error vocabulary: each error carries its facts as attributes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: where (``file``, ``path`` like ``modules[2].with.every``) and why."""

    file: str
    path: str
    reason: str
    shown: str = ""
    """The path as printed, naming the entry it is in (``modules[2](climate).with.every``)."""

    def __str__(self) -> str:
        where = self.shown or self.path
        return f"{self.file}: {where}: {self.reason}" if where else f"{self.file}: {self.reason}"


class EdgeAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """A config could not be read or is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


class ModuleLoadError(EdgeAgentError):
    """A ``use`` value names no registered module, or its file or class cannot be loaded."""

    def __init__(self, use: str, reason: str) -> None:
        self.use = use
        self.reason = reason
        super().__init__(f"{use!r}: {reason}")


class ModuleError(EdgeAgentError):
    """A module instance raised from one of its hooks."""

    def __init__(self, module: str, hook: str, cause: BaseException) -> None:
        self.module = module
        self.hook = hook
        self.cause = cause
        super().__init__(f"module {module!r} failed in {hook}: {cause!r}")


class ModuleHung(EdgeAgentError):
    """Raised inside a module's step that held the event loop longer than allowed."""


class OutboxError(EdgeAgentError):
    """The outbox could not be opened or written (disk full, file not a database, ...)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")

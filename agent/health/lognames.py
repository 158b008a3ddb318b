"""Logger names from before the code was arranged by job, and the names that replaced them.

Logger names follow module paths, so they changed when the modules moved. Operators' scripts
and ``set-log-level`` commands written with an old name keep working: the old name also sets
the new one.
"""

from __future__ import annotations

RENAMED = {
    "agent.runtime": "agent.supervisor",
    "agent.daemon": "agent.cli.daemon",
    "agent.pipeline": "agent.runtime.pipeline",
    "agent.module_runner": "agent.runtime.module_runner",
    "agent.loopwatch": "agent.runtime.loopwatch",
    "agent.replay": "agent.runtime.replay",
    "agent.committer": "agent.outbox.committer",
    "agent.commands": "agent.remote.commands",
    "agent.remote_config": "agent.remote.config",
    "agent.remote_rules": "agent.remote.rules",
    "agent.status": "agent.health.status",
    "agent.metrics": "agent.health.metrics",
    "cloud_sync.tracker": "cloud_sync.uploader.tracker",
    "cloud_sync.ratelimit": "cloud_sync.uploader.ratelimit",
    "cloud_sync.tls": "cloud_sync.uploader.tls",
}


def current_names(name: str | None) -> list[str | None]:
    """The loggers a name means now: itself, and what replaced it if it is an old name."""
    renamed = RENAMED.get(name or "")
    return [name] if renamed is None else [name, renamed]

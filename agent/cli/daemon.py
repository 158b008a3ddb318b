"""Starting the daemon: the config or every error in it, logging, and the run itself.

Shared by the fast path (``agent.cli.entry``) and the click commands (``agent.cli.main``), which
import this module and never each other's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from agent.config import LoadedConfig, load_config
from agent.errors import ConfigError, OutboxError


def load_or_exit(path: Path) -> LoadedConfig:
    """The validated config, or every problem on stderr and exit status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        sys.exit(2)


def setup_logging(level: str) -> None:
    # Plain lines on stderr: journald adds the time and the unit.
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def run_daemon(config_path: Path) -> int:
    """Run the agent until SIGTERM or SIGINT; the process's exit status."""
    from agent.supervisor import Agent

    loaded = load_or_exit(config_path)
    setup_logging(loaded.agent.log_level)
    # Everything the daemon creates is its user's alone (the outbox, its journal, the state
    # files), with or without systemd's UMask= and StateDirectoryMode= (docs/security.md).
    os.umask(0o077)
    try:
        asyncio.run(Agent(loaded).run())
    except OutboxError as exc:
        logging.getLogger("agent").error("%s", exc)
        return 1
    return 0

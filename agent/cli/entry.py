"""``edge-agent run`` without the CLI library.

The daemon runs for months beside other services on a 1 GB board; the CLI library costs it
about 1.3 MB of resident memory that it never uses after parsing one option. So ``main`` takes
``edge-agent run -c FILE`` straight to the daemon and hands every other command line to the
click CLI in ``agent.cli.main``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.cli.daemon import run_daemon


def main() -> None:
    """The ``edge-agent`` console script."""
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "run" and args[1] in ("-c", "--config"):
        sys.exit(run_daemon(Path(args[2])))
    from agent.cli.main import main as cli

    cli()

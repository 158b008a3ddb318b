"""``edge-cloud``: the cloud ingest and console."""

from __future__ import annotations

import sys


def main() -> None:
    print("edge-cloud: not yet available in this version", file=sys.stderr)
    sys.exit(1)

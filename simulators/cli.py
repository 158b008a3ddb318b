"""``edge-sim``: simulated sensors, fleets and link faults."""

from __future__ import annotations

import sys


def main() -> None:
    print("edge-sim: not yet available in this version", file=sys.stderr)
    sys.exit(1)

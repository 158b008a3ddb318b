"""``python -m simulators`` is ``edge-sim``."""

from simulators.cli import main

main()

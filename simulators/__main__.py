"""``python -m simulators`` is ``edge-sim``."""

from simulators.cli import main

if __name__ == "__main__":  # importing this file must not start a simulator
    main()

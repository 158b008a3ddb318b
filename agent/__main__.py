"""``python -m agent`` is ``edge-agent``."""

from agent.cli.entry import main

if __name__ == "__main__":  # importing this file (as a module file, say) must not run the agent
    main()

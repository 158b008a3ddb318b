"""``python -m cloud_sync`` is ``edge-cloud``."""

from cloud_sync.server.cli import main

if __name__ == "__main__":  # importing this file must not start a server
    main()

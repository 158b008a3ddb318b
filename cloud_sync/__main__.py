from cloud_sync.server.cli import main

main()

from cloud_sync.cli import main

main()

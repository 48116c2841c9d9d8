from buildrunnerd.daemon.cli import main

main()

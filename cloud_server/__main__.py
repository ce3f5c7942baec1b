"""``python -m cloud_server`` = ``genfl-server``."""

from cloud_server.cli import main

main()

"""``python -m edge_agent`` = ``genfl-edge``."""

from edge_agent.cli import main

main()

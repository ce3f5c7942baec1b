"""``python -m edge_agent.pool``: the training pool (see :mod:`edge_agent._pool`)."""

import sys

from edge_agent._pool import main

if __name__ == "__main__":
    sys.exit(main())

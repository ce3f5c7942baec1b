"""``python -m edge_agent.multi``: many simulated agents in one process (see :mod:`edge_agent._multi`)."""

import sys

from edge_agent._multi import main

if __name__ == "__main__":
    sys.exit(main())

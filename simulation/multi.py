"""``python -m simulation.multi``: many simulated agents in one process (see :mod:`simulation._multi`)."""

import sys

from simulation._multi import main

if __name__ == "__main__":
    sys.exit(main())

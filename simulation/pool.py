"""``python -m simulation.pool``: the training pool (see :mod:`simulation._pool`)."""

import sys

from simulation._pool import main

if __name__ == "__main__":
    sys.exit(main())

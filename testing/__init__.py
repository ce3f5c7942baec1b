"""What tests and benchmarks share and a deployment never needs: a local NATS cluster, hand-made frames.

No production package imports it (``tests/test_layout.py`` checks).
"""

from __future__ import annotations

from .cluster import LocalCluster, free_loopback_spec
from .frames import raw_frame

__all__ = ["LocalCluster", "free_loopback_spec", "raw_frame"]

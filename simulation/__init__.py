"""Simulations of a fleet on one machine: one data set partitioned over simulated devices, in one process or as
real agents over MQTT, and what only a simulation needs (partitions, attacks, many agents to a process, a shared
training pool). No production package imports it: ``genfl-server simulate`` finds it through an entry point.

Names are imported on first use (PEP 562).
"""

import lazy_loader

# the names are the imports of __init__.pyi (which the type checker reads), each imported on first use
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)

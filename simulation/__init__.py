"""Simulations of a fleet on one machine: one data set partitioned over simulated devices, in one process or as
real agents over MQTT, and what only a simulation needs (partitions, attacks, many agents to a process, a shared
training pool). No production package imports it: ``genfl-server simulate`` finds it through an entry point.

Names are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol._lazy import lazy_names

if TYPE_CHECKING:
    from ._partition import dirichlet_partition, label_histogram, partition_labels, shard_partition
    from ._report import histogram_table
    from ._simulation import (
        DeviceShards,
        SimulationConfig,
        SimulationHooks,
        SimulationResult,
        device_shards,
        plot_curve,
        run_simulation,
        write_outputs,
    )

_WHERE = {
    "dirichlet_partition": "_partition",
    "label_histogram": "_partition",
    "partition_labels": "_partition",
    "shard_partition": "_partition",
    "histogram_table": "_report",
    "DeviceShards": "_simulation",
    "SimulationConfig": "_simulation",
    "SimulationHooks": "_simulation",
    "SimulationResult": "_simulation",
    "device_shards": "_simulation",
    "plot_curve": "_simulation",
    "run_simulation": "_simulation",
    "write_outputs": "_simulation",
}

__all__ = [
    "DeviceShards",
    "SimulationConfig",
    "SimulationHooks",
    "SimulationResult",
    "device_shards",
    "dirichlet_partition",
    "histogram_table",
    "label_histogram",
    "partition_labels",
    "plot_curve",
    "run_simulation",
    "shard_partition",
    "write_outputs",
]

__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)

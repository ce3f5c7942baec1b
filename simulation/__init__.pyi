"""What ``simulation`` offers (imported on first use, see ``__init__.py``): one import per submodule.

Each name is imported ``as`` itself: in a stub, that is what re-exports it."""

from ._partition import (
    dirichlet_partition as dirichlet_partition,
    label_histogram as label_histogram,
    partition_labels as partition_labels,
    shard_partition as shard_partition,
)
from ._report import histogram_table as histogram_table
from ._simulation import (
    DeviceShards as DeviceShards,
    SimulationConfig as SimulationConfig,
    SimulationHooks as SimulationHooks,
    SimulationResult as SimulationResult,
    device_shards as device_shards,
    plot_curve as plot_curve,
    run_simulation as run_simulation,
    write_outputs as write_outputs,
)

"""The cloud side: coordinator, strategies, aggregation, simulation, the CLI."""

from ._aggregation import WeightedDeltaSum, apply_delta, check_update_shapes, weighted_average
from ._broker import EmbeddedBroker
from ._coordinator import Coordinator, CoordinatorConfig, DeviceRecord, RoundResult
from ._journal import SqliteJournal
from ._serve import ServeConfig, run_server
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
from ._strategy import STRATEGIES, FedAvg, FedProx, Strategy, StrategyConfig, derive_seed, make_strategy

__all__ = [
    "STRATEGIES",
    "Coordinator",
    "EmbeddedBroker",
    "CoordinatorConfig",
    "DeviceRecord",
    "DeviceShards",
    "FedAvg",
    "FedProx",
    "RoundResult",
    "ServeConfig",
    "SimulationConfig",
    "SimulationHooks",
    "SimulationResult",
    "Strategy",
    "SqliteJournal",
    "StrategyConfig",
    "WeightedDeltaSum",
    "apply_delta",
    "check_update_shapes",
    "derive_seed",
    "device_shards",
    "make_strategy",
    "plot_curve",
    "run_server",
    "run_simulation",
    "weighted_average",
    "write_outputs",
]
__version__ = "0.1.0"

"""The cloud side: coordinator, strategies, aggregation, simulation, the CLI."""

from ._aggregation import WeightedDeltaSum, apply_delta, check_update_shapes, weighted_average
from ._coordinator import Coordinator, CoordinatorConfig, DeviceRecord, RoundResult
from ._simulation import SimulationConfig, SimulationHooks, SimulationResult, plot_curve, run_simulation, write_outputs
from ._strategy import STRATEGIES, FedAvg, FedProx, Strategy, StrategyConfig, derive_seed, make_strategy

__all__ = [
    "STRATEGIES",
    "Coordinator",
    "CoordinatorConfig",
    "DeviceRecord",
    "FedAvg",
    "FedProx",
    "RoundResult",
    "SimulationConfig",
    "SimulationHooks",
    "SimulationResult",
    "Strategy",
    "StrategyConfig",
    "WeightedDeltaSum",
    "apply_delta",
    "check_update_shapes",
    "derive_seed",
    "make_strategy",
    "plot_curve",
    "run_simulation",
    "weighted_average",
    "write_outputs",
]
__version__ = "0.1.0"

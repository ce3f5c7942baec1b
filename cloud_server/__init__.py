"""The cloud side: coordinator, strategies, aggregation, the CLI.

Names are imported on first use (PEP 562), so that the administrative commands
(``devices``, ``broker-config``, ``--help``) start without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol._lazy import lazy_names

if TYPE_CHECKING:
    from ._aggregation import WeightedDeltaSum, apply_delta, check_update_shapes, weighted_average
    from ._broker import EmbeddedBroker
    from ._coordinator import Coordinator, CoordinatorConfig, DeviceRecord, RoundResult
    from ._journal import SqliteJournal
    from ._serve import ServeConfig, run_server
    from ._strategies import make_strategy
    from ._strategy import STRATEGIES, FedAvg, FedProx, Strategy, StrategyConfig, derive_seed

_WHERE = {
    "WeightedDeltaSum": "_aggregation",
    "apply_delta": "_aggregation",
    "check_update_shapes": "_aggregation",
    "weighted_average": "_aggregation",
    "EmbeddedBroker": "_broker",
    "Coordinator": "_coordinator",
    "CoordinatorConfig": "_coordinator",
    "DeviceRecord": "_coordinator",
    "RoundResult": "_coordinator",
    "SqliteJournal": "_journal",
    "ServeConfig": "_serve",
    "run_server": "_serve",
    "STRATEGIES": "_strategy",
    "FedAvg": "_strategy",
    "FedProx": "_strategy",
    "Strategy": "_strategy",
    "StrategyConfig": "_strategy",
    "derive_seed": "_strategy",
    "make_strategy": "_strategies",
}

__all__ = [
    "WeightedDeltaSum",
    "apply_delta",
    "check_update_shapes",
    "weighted_average",
    "EmbeddedBroker",
    "Coordinator",
    "CoordinatorConfig",
    "DeviceRecord",
    "RoundResult",
    "SqliteJournal",
    "ServeConfig",
    "run_server",
    "STRATEGIES",
    "FedAvg",
    "FedProx",
    "Strategy",
    "StrategyConfig",
    "derive_seed",
    "make_strategy",
]
__version__ = "0.1.0"


__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)

"""The cloud side: coordinator, strategies, aggregation, the CLI.

Names are imported on first use (PEP 562), so that the administrative commands
(``devices``, ``broker-config``, ``--help``) start without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol._lazy import lazy_package

if TYPE_CHECKING:
    from .broker._broker import EmbeddedBroker
    from .learning._aggregation import WeightedDeltaSum, apply_delta, check_update_shapes, weighted_average
    from .learning._strategies import make_strategy
    from .learning._strategy import STRATEGIES, FedAvg, FedProx, Strategy, StrategyConfig, derive_seed
    from .ops._serve import run_server
    from .ops._serve_config import ServeConfig
    from .rounds._coordinator import Coordinator, CoordinatorConfig, DeviceRecord, RoundResult
    from .rounds._journal import SqliteJournal

_WHERE = {
    "WeightedDeltaSum": "learning._aggregation",
    "apply_delta": "learning._aggregation",
    "check_update_shapes": "learning._aggregation",
    "weighted_average": "learning._aggregation",
    "EmbeddedBroker": "broker._broker",
    "Coordinator": "rounds._coordinator",
    "CoordinatorConfig": "rounds._coordinator",
    "DeviceRecord": "rounds._coordinator",
    "RoundResult": "rounds._coordinator",
    "SqliteJournal": "rounds._journal",
    "ServeConfig": "ops._serve_config",
    "run_server": "ops._serve",
    "STRATEGIES": "learning._strategy",
    "FedAvg": "learning._strategy",
    "FedProx": "learning._strategy",
    "Strategy": "learning._strategy",
    "StrategyConfig": "learning._strategy",
    "derive_seed": "learning._strategy",
    "make_strategy": "learning._strategies",
}

__all__, __getattr__, __dir__ = lazy_package(__name__, _WHERE)  # every name it offers, imported on first use
__version__ = "0.1.0"

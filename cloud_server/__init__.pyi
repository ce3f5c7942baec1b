"""What ``cloud_server`` offers (imported on first use, see ``__init__.py``): one import per submodule.

Each name is imported ``as`` itself: in a stub, that is what re-exports it."""

from .broker._broker import EmbeddedBroker as EmbeddedBroker
from .learning._aggregation import (
    WeightedDeltaSum as WeightedDeltaSum,
    apply_delta as apply_delta,
    check_update_shapes as check_update_shapes,
    weighted_average as weighted_average,
)
from .learning._strategies import make_strategy as make_strategy
from .learning._strategy import (
    STRATEGIES as STRATEGIES,
    FedAvg as FedAvg,
    FedProx as FedProx,
    Strategy as Strategy,
    StrategyConfig as StrategyConfig,
    derive_seed as derive_seed,
)
from .ops._serve import run_server as run_server
from .ops._serve_config import ServeConfig as ServeConfig
from .rounds._coordinator import (
    Coordinator as Coordinator,
    CoordinatorConfig as CoordinatorConfig,
    DeviceRecord as DeviceRecord,
    RoundResult as RoundResult,
)
from .rounds._journal import SqliteJournal as SqliteJournal

__version__: str

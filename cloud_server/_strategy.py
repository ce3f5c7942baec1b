"""Strategies: which devices train, how, and how their updates combine.

Each strategy pairs ``configure_round`` (before) with ``aggregate_round``
(after), in the manner of Flower's server strategies; the arithmetic lives
in ``_aggregation`` as pure functions.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Union

import numpy as np

from protocol import (
    AUGMENTATIONS,
    CODECS,
    Augmentation,
    Codec,
    ConfigError,
    TensorDict,
    TrainConfig,
    Update,
    setting,
)

from ._aggregation import WeightedDeltaSum, apply_delta
from ._genfl_config import GenflConfig
from ._robust import AGGREGATORS, Aggregation, BufferedUpdates

Accumulator = Union[WeightedDeltaSum, BufferedUpdates]

__all__ = [
    "STRATEGIES",
    "StrategyName",
    "FedAvg",
    "FedProx",
    "Strategy",
    "StrategyConfig",
    "derive_seed",
]


class StrategyName(str, Enum):
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    GENFL = "genfl"
    AIGC_ONLY = "aigc-only"


STRATEGIES = tuple(s.value for s in StrategyName)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's ``hash`` changes between processes)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class StrategyConfig:
    """The strategy and training settings, declared here once (the training ones' defaults come from the task's
    TrainConfig that carries them): SimulationConfig and ServeConfig inherit these fields, and both commands'
    options are made from them (``protocol.options_from``)."""

    strategy: str = setting("fedavg", "How rounds train and combine.", choices=StrategyName)
    fraction: float = setting(1.0, "Share of online devices picked each round.")
    local_epochs: int = setting(TrainConfig.local_epochs, "Local epochs per round.")
    batch_size: int = setting(TrainConfig.batch_size, "Local batch size.")
    learning_rate: float = setting(TrainConfig.learning_rate, "Local SGD learning rate.", flag="--lr")
    momentum: float = setting(TrainConfig.momentum, "Local SGD momentum.")
    weight_decay: float = setting(TrainConfig.weight_decay, "Local SGD weight decay (L2).")
    prox_mu: float = setting(0.01, "FedProx proximal weight (a task carries 0 for the other strategies).", flag="--mu")
    seed: int = setting(0, "Seed of the initial model, the device sampling and (simulate) the partitions.")
    codec: str = setting(TrainConfig.codec, "How devices send updates (announced in each task).", choices=Codec)
    qat: bool = setting(TrainConfig.qat, "Devices train int8 quantization-aware (default) or in float.")
    aggregate: str = setting(
        "fedavg", "FedAvg's weighted mean or a rule robust to faulty devices.", choices=Aggregation
    )
    trim: float = setting(0.2, "Share trimmed from each end by trimmed-mean.")
    bucket_size: int = setting(1, "Robust rules: average random buckets of this many updates first (1: off).")
    augment: str | None = setting(
        None, "Local augmentation: none or crop-flip (default: the model's own choice).", choices=Augmentation
    )
    genfl: GenflConfig = field(default_factory=GenflConfig)  # the genfl and aigc-only strategies' settings

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; use one of {', '.join(CODECS)}")
        if self.aggregate not in AGGREGATORS:
            raise ConfigError(f"unknown aggregation {self.aggregate!r}; use one of {', '.join(AGGREGATORS)}")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {self.augment!r}; use one of {', '.join(AUGMENTATIONS)}")
        if not 0.0 <= self.trim < 0.5:
            raise ConfigError(f"trim must be in [0, 0.5), got {self.trim}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.prox_mu < 0:
            raise ConfigError(f"prox mu must be >= 0, got {self.prox_mu}")

    def strategy_config(self) -> StrategyConfig:
        """Just the strategy's settings (a run's config inherits these fields, and has more)."""
        return StrategyConfig(**{item.name: getattr(self, item.name) for item in fields(StrategyConfig)})


class Strategy(ABC):
    name: str

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config
        self.model_name: str | None = None
        self.classes: tuple[str, ...] = ()

    def select(self, round_number: int, available: Sequence[str]) -> list[str]:
        """A seeded sample of ``fraction`` of the available devices (at least one)."""
        ordered = sorted(available)
        if not ordered:
            return []
        wanted = max(1, math.ceil(self.config.fraction * len(ordered)))
        if wanted >= len(ordered):
            return ordered
        rng = np.random.default_rng(derive_seed("select", self.config.seed, round_number))
        return sorted(rng.choice(ordered, size=wanted, replace=False).tolist())

    def train_config(self, round_number: int, device_id: str) -> TrainConfig:
        c = self.config
        return TrainConfig(
            local_epochs=c.local_epochs,
            batch_size=c.batch_size,
            learning_rate=c.learning_rate,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            prox_mu=self.proximal_mu(),
            seed=derive_seed("train", c.seed, round_number, device_id),
            codec=c.codec,
            qat=c.qat,
            augment=self.augmentation(),
        )

    def augmentation(self) -> str:
        """The augmentation devices apply: as configured, else the model's default (none for unknown models)."""
        if self.config.augment is not None:
            return self.config.augment
        from models import MODELS  # torch: only once a round is configured

        if self.model_name is None or self.model_name not in MODELS:
            return "none"
        return MODELS[self.model_name].augment

    def configure_round(self, round_number: int, available: Sequence[str]) -> dict[str, TrainConfig]:
        """Devices picked for the round and the training config each gets."""
        return {d: self.train_config(round_number, d) for d in self.select(round_number, available)}

    def bind(self, model_name: str, classes: tuple[str, ...]) -> None:
        """The coordinator tells the strategy which model it trains and the fleet's class names (the generative
        ones need them: a pool's folders and a pipeline's prompts are class names)."""
        self.model_name = model_name
        self.classes = classes

    def synthetic_batches(
        self, round_number: int, configs: dict[str, TrainConfig], devices: Mapping[str, tuple[int, Any]]
    ) -> tuple[dict[str, TrainConfig], dict[str, bytes]]:
        """GenFL: synthetic batches (encoded) per picked device, and the configs that weigh them.

        ``devices`` maps each picked device to (sample count, label counts or None). Plain
        strategies send none."""
        del round_number, devices
        return configs, {}

    def round_evaluated(self, round_number: int, device_accuracy: float | None, teacher_accuracy: float | None) -> None:
        """What the round's devices measured on their own data (weighted means; None if none reported): the
        model the round started from (``device_accuracy``) and their trained models (``teacher_accuracy``,
        their training accuracy). Plain strategies need neither."""
        del round_number, device_accuracy, teacher_accuracy

    def update_accepted(self, round_number: int, device_id: str, update: Update) -> None:
        """An update of the round was accepted (strategies that read more of it than its delta look here)."""
        del round_number, device_id, update

    def update_withdrawn(self, round_number: int, device_id: str) -> None:
        """An accepted update was taken back out of the open round (its device was revoked)."""
        del round_number, device_id

    def resumed(self, reports: Sequence[Mapping[str, Any]]) -> None:
        """The server restarted on a state whose closed rounds reported these (oldest first)."""
        del reports

    def round_report(self, round_number: int) -> dict[str, Any] | None:
        """What the strategy did in a round beyond training, for the operator (GenFL: its synthetic data)."""
        del round_number
        return None

    def round_stats(self) -> tuple[float, dict[str, int]]:
        """Generator seconds spent for the round and synthetic bytes sent per device (none here)."""
        return 0.0, {}

    def new_accumulator(self, template: TensorDict) -> Accumulator:
        """Where a round's updates go: the streaming sum for FedAvg, a buffer for the robust rules."""
        if self.config.aggregate == "fedavg":
            return WeightedDeltaSum(template)
        return BufferedUpdates(template, self.config.aggregate, self.config.trim, self.config.bucket_size)

    def aggregate_round(self, global_state: TensorDict, updates: Accumulator) -> TensorDict:
        """New global model from the round's accumulated updates."""
        return apply_delta(global_state, updates.mean())

    @abstractmethod
    def proximal_mu(self) -> float: ...


class FedAvg(Strategy):
    """McMahan et al. 2017: sample-weighted average of the devices' models."""

    name = "fedavg"

    def proximal_mu(self) -> float:
        return 0.0


class FedProx(Strategy):
    """Li et al. 2020: FedAvg whose local loss adds ``mu/2 * ||w - w_global||^2``."""

    name = "fedprox"

    def proximal_mu(self) -> float:
        return self.config.prox_mu

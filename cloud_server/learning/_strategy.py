"""Strategies: which devices train, how, and how their updates combine.

The contract has Flower's shape: what a call needs comes in its arguments, what it decides goes out in its
return value, and no call relies on another having come first.

- ``configure_round(round, available)``: the devices picked and the training config each gets;
- ``configure_synthetic(round, global_state, configs, devices)``: a :class:`RoundPlan`, the configs with any
  synthetic batches (GenFL) and the figures of making them;
- ``new_accumulator(template)``: where the round's accepted deltas are folded as they arrive (streaming, so
  that the server's memory does not grow with the fleet);
- ``aggregate_fit(global_state, results)``: :class:`RoundResults` in, the new global model and metrics out;
- ``aggregate_evaluate(results)``: the devices' own measurements in, the round's evaluation metrics out;
- ``restore(history)``: a restarted server's closed rounds' metrics, oldest first.

The arithmetic lives in ``_aggregation`` as pure functions.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

import numpy as np

from protocol import (
    AUGMENTATIONS,
    CODECS,
    Augmentation,
    Codec,
    ConfigError,
    TensorDict,
    TrainConfig,
    setting,
)

from ._aggregation import Accumulator, WeightedDeltaSum, apply_delta
from ._genfl_config import GenflConfig
from ._robust import AGGREGATORS, Aggregation, BufferedUpdates

__all__ = [
    "STRATEGIES",
    "Configs",
    "DeviceInfo",
    "Devices",
    "FitResult",
    "RoundPlan",
    "RoundResults",
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


@dataclass(frozen=True)
class DeviceInfo:
    """What the fleet knows of a picked device: the weight it counts for and its label counts (None: unshared)."""

    num_samples: int
    label_counts: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RoundPlan:
    """A round's training configs per device, the synthetic batches (encoded) some get, and the figures of
    making them (metrics of the round)."""

    configs: dict[str, TrainConfig]
    synthetic: dict[str, bytes] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult:
    """One accepted update as a strategy sees it besides its delta (which the accumulator holds)."""

    num_samples: int  # the weight it counts for
    train_loss: float
    train_accuracy: float  # the trained model on the device's own data
    eval_accuracy: float | None = None  # the model the round started from, on the device's own data
    label_counts: tuple[float, ...] | None = None
    probe_scores: tuple[int, ...] | None = None  # GenFL pool: the device's verdicts on the probes it was sent


@dataclass(frozen=True)
class RoundResults:
    """A round's accepted updates: their deltas folded in ``updates``, the rest per device in ``fits``."""

    round_number: int
    updates: Accumulator
    fits: Mapping[str, FitResult]
    # Under secure aggregation: no device's figures, only their weighted means over the round (see ``mean_of``)
    pooled: Mapping[str, float | None] | None = None

    def mean_of(self, figure: str) -> float | None:
        """The sample-weighted mean of a figure over the round's accepted updates (None if none reports it)."""
        return self.pooled.get(figure) if self.pooled is not None else weighted_mean(self.fits, figure)


Configs = dict[str, TrainConfig]  # device -> the training config of its task
Devices = Mapping[str, DeviceInfo]  # picked device -> what the fleet knows of it


def weighted_mean(fits: Mapping[str, FitResult], figure: str) -> float | None:
    """The sample-weighted mean of one figure of the fits that report it (None if none does)."""
    pairs = [(getattr(fit, figure), fit.num_samples) for fit in fits.values() if getattr(fit, figure) is not None]
    weight = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / weight if weight else None


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
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
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

    def __init__(self, config: StrategyConfig, *, model_name: str | None = None, classes: tuple[str, ...] = ()) -> None:
        self.config = config
        self.model_name = model_name  # the model the fleet trains (the generative strategies build on it)
        self.classes = classes  # the fleet's class names: a pool's folders and a pipeline's prompts are these

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

    def configure_synthetic(
        self, round_number: int, global_state: TensorDict, configs: Configs, devices: Devices
    ) -> RoundPlan:
        """The round's plan: GenFL adds synthetic batches for the picked ``devices``; plain strategies none."""
        del round_number, global_state, devices
        return RoundPlan(configs)

    def new_accumulator(self, template: TensorDict) -> Accumulator:
        """Where a round's updates go: the streaming sum for FedAvg, a buffer for the robust rules."""
        if self.config.aggregate == "fedavg":
            return WeightedDeltaSum(template)
        return BufferedUpdates(template, self.config.aggregate, self.config.trim, self.config.bucket_size)

    def aggregate_fit(self, global_state: TensorDict, results: RoundResults) -> tuple[TensorDict, dict[str, Any]]:
        """The new global model from the round's updates, and the strategy's metrics of making it."""
        return apply_delta(global_state, results.updates.mean()), {}

    def aggregate_evaluate(self, results: RoundResults) -> dict[str, Any]:
        """The round's evaluation from what its devices measured on their own data (weighted means; None if
        none reported): the model the round started from (``device_accuracy``) and their trained models
        (``teacher_accuracy``, their training accuracy)."""
        return {
            "device_accuracy": results.mean_of("eval_accuracy"),
            "teacher_accuracy": results.mean_of("train_accuracy"),
        }

    def restore(self, history: Sequence[Mapping[str, Any]]) -> None:
        """A restarted server's closed rounds' metrics (oldest first): plain strategies keep nothing."""
        del history

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

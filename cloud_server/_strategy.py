"""Strategies: which devices train, how, and how their updates combine.

Each strategy pairs ``configure_round`` (before) with ``aggregate_round``
(after), in the manner of Flower's server strategies; the arithmetic lives
in ``_aggregation`` as pure functions.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Union

import numpy as np

from protocol import CODECS, ConfigError, TensorDict, TrainConfig

from ._aggregation import WeightedDeltaSum, apply_delta
from ._robust import AGGREGATORS, BufferedUpdates

Accumulator = Union[WeightedDeltaSum, BufferedUpdates]

__all__ = ["STRATEGIES", "FedAvg", "FedProx", "Strategy", "StrategyConfig", "derive_seed", "make_strategy"]


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's ``hash`` changes between processes)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class StrategyConfig:
    fraction: float = 1.0
    # Defaults for every entry point (simulate, serve, the CLIs refer to these).
    local_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    prox_mu: float = 0.01
    seed: int = 0
    codec: str = "fp32"  # how devices encode updates: fp32, int8 or int4 (announced in each task)
    qat: bool = True  # devices train int8 quantization-aware (fake quant); --no-qat for float
    aggregate: str = "fedavg"  # fedavg (streaming), median, trimmed-mean or clipped
    trim: float = 0.2  # share cut from each end by trimmed-mean

    @classmethod
    def taken_from(cls, settings: object) -> StrategyConfig:
        """The strategy settings of a simulate or serve config (fields of the same name)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)})

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; use one of {', '.join(CODECS)}")
        if self.aggregate not in AGGREGATORS:
            raise ConfigError(f"unknown aggregation {self.aggregate!r}; use one of {', '.join(AGGREGATORS)}")
        if not 0.0 <= self.trim < 0.5:
            raise ConfigError(f"trim must be in [0, 0.5), got {self.trim}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.prox_mu < 0:
            raise ConfigError(f"prox mu must be >= 0, got {self.prox_mu}")


class Strategy(ABC):
    name: str

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

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
        )

    def configure_round(self, round_number: int, available: Sequence[str]) -> dict[str, TrainConfig]:
        """Devices picked for the round and the training config each gets."""
        return {d: self.train_config(round_number, d) for d in self.select(round_number, available)}

    def new_accumulator(self, template: TensorDict) -> Accumulator:
        """Where a round's updates go: the streaming sum for FedAvg, a buffer for the robust rules."""
        if self.config.aggregate == "fedavg":
            return WeightedDeltaSum(template)
        return BufferedUpdates(template, self.config.aggregate, self.config.trim)

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


STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx}


def make_strategy(name: str, config: StrategyConfig) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](config)

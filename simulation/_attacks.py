"""Corrupted updates, for demonstrations and tests of the robust aggregators (simulation only)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np

from protocol import ConfigError, TensorDict

__all__ = ["ATTACKS", "Attack", "attacked_training", "make_attack"]


class Attack(str, Enum):
    """A simulated device's corruption of its update."""

    SCALE = "scale"
    SIGN_FLIP = "sign-flip"
    NOISE = "noise"


ATTACKS = tuple(a.value for a in Attack)


def make_attack(name: str, seed: int) -> Callable[[TensorDict], TensorDict]:
    """A function that corrupts a device's delta (float tensors only; counters stay honest).

    ``scale``: x10; ``sign-flip``: x-10; ``noise``: Gaussian noise with ten times each tensor's spread.
    """
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; use one of {', '.join(ATTACKS)}")
    rng = np.random.default_rng(seed)

    def attack(delta: TensorDict) -> TensorDict:
        out = {}
        for key, value in delta.items():
            if not np.issubdtype(value.dtype, np.floating):
                out[key] = value
            elif name == "scale":
                out[key] = value * np.float32(10)
            elif name == "sign-flip":
                out[key] = value * np.float32(-10)
            else:
                spread = float(value.std()) or 1e-3
                out[key] = (value + rng.normal(0.0, 10 * spread, value.shape)).astype(value.dtype)
        return out

    return attack


def attacked_training(name: str, seed: int) -> Callable[..., Any]:
    """Local training whose delta the attack ``name`` corrupts before the board encodes it (a runner's
    ``train``)."""
    attack = make_attack(name, seed)

    def train(*args: Any) -> Any:
        from dataclasses import replace

        from edge_agent._training import train_local

        result = train_local(*args)
        return replace(result, delta=attack(result.delta))

    return train

"""The strategies by name: the one place that knows every strategy (the base module knows none of them)."""

from __future__ import annotations

from protocol import ConfigError

from ._strategy import STRATEGIES, FedAvg, FedProx, Strategy, StrategyConfig

__all__ = ["make_strategy"]


def make_strategy(name: str, config: StrategyConfig) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if name == "fedavg":
        return FedAvg(config)
    if name == "fedprox":
        return FedProx(config)
    from ._genfl import AigcOnly, GenFL  # the generative strategies import torch when they first generate

    return GenFL(config) if name == "genfl" else AigcOnly(config)

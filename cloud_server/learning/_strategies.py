"""The strategies by name: the one place that knows every strategy (the base module knows none of them)."""

from __future__ import annotations

from protocol import ConfigError

from ._strategy import STRATEGIES, FedAvg, FedProx, Strategy, StrategyConfig

__all__ = ["make_strategy"]


def make_strategy(config: StrategyConfig, *, model_name: str, classes: tuple[str, ...]) -> Strategy:
    """The strategy ``config.strategy`` names, for a fleet that trains ``model_name`` on ``classes``."""
    name = config.strategy
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    kinds: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx}
    if name not in kinds:
        from ._genfl import AigcOnly, GenFL  # the generative strategies import torch when they first generate

        kinds.update({"genfl": GenFL, "aigc-only": AigcOnly})
    return kinds[name](config.strategy_config(), model_name=model_name, classes=classes)

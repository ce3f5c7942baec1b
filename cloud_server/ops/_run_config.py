"""What every run of a fleet sets beyond its strategy (``serve`` and ``simulate`` both): the round timeout and
the broker. The settings whose defaults differ between the two (rounds, model, fleet) are each run's own."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import DEFAULT_ROUND_TIMEOUT_S, setting

from ..learning._strategy import StrategyConfig

__all__ = ["FleetRunConfig"]


@dataclass(frozen=True, kw_only=True)
class FleetRunConfig(StrategyConfig):
    round_timeout_s: float = setting(
        DEFAULT_ROUND_TIMEOUT_S, "Seconds before stragglers are left out of a round.", flag="--round-timeout"
    )
    broker: str | None = setting(
        None,
        "Broker URL (a cluster: its nodes, comma-separated; simulate --transport mqtt spreads its agents over "
        "them); without it an embedded broker starts.",
    )
    embedded_broker: str = setting("auto", "Without --broker: auto (mosquitto if on PATH), mosquitto or amqtt.")

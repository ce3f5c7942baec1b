"""What every run of a fleet sets beyond its strategy (``serve`` and ``simulate`` both): the round timeout and
the broker. The settings whose defaults differ between the two (rounds, model, fleet) are each run's own."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import DEFAULT_ROUND_TIMEOUT_S, ConfigError, setting

from ..learning._strategy import StrategyConfig
from ..rounds._config import SECAGG_PHASE_S, PrivacyConfig

__all__ = ["FleetRunConfig", "secure_aggregation_refusal"]


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
    secure_aggregation: bool = setting(
        False, "Devices mask their updates: the server learns only each round's sum (docs/security.md)."
    )
    secagg_phase_s: float = setting(
        SECAGG_PHASE_S, "Secure aggregation: seconds each exchange of keys and shares may take.", flag="--secagg-phase"
    )
    dp_clip: float | None = setting(
        None, "Client-level DP (DP-FedAvg): clip every update to this L2 norm (docs/security.md).", metavar="NORM"
    )
    dp_noise: float = setting(1.0, "DP: Gaussian noise on each round's sum, in multiples of the clipping norm.")
    dp_delta: float = setting(1e-5, "DP: the delta of the epsilon the run reports.")
    dp_budget: float | None = setting(None, "DP: no round opens that would spend past this epsilon.", metavar="EPSILON")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.secagg_phase_s > 0:
            raise ConfigError(f"the secure-aggregation phase must be a positive time, got {self.secagg_phase_s} s")
        if self.secure_aggregation:
            refusal = secure_aggregation_refusal(self)
            if refusal is not None:
                raise ConfigError(f"--secure-aggregation: {refusal}")
        if self.dp_clip is not None:
            self.privacy()  # its own checks
            refusal = secure_aggregation_refusal(self)  # the same: noise on a sum protects a sum only
            if refusal is not None:
                raise ConfigError(f"--dp-clip: {refusal}")
        elif self.dp_budget is not None:
            raise ConfigError("--dp-budget needs --dp-clip (differential privacy)")

    def privacy(self) -> PrivacyConfig | None:
        """Client-level DP as the coordinator takes it (None: off)."""
        if self.dp_clip is None:
            return None
        return PrivacyConfig(self.dp_clip, self.dp_noise, self.dp_delta, self.dp_budget)


def secure_aggregation_refusal(config: StrategyConfig) -> str | None:
    """Why these settings cannot run under secure aggregation (the server sees only the round's sum), or None."""
    if config.aggregate != "fedavg":
        return f"the {config.aggregate} rule needs each device's update; only the plain mean works on a sum"
    if config.strategy == "aigc-only" or (config.strategy == "genfl" and config.genfl.generator == "data-free"):
        return "the data-free generator learns from each device's model; use GenFL with --synthetic-pool"
    return None

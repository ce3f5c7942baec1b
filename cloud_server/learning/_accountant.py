"""The privacy a DP-FedAvg run has spent: Google's ``dp-accounting`` RDP accountant, not our arithmetic.

Client-level DP-FedAvg (McMahan et al. 2018): each round samples devices (rate
``q``: picked / fleet), each clips its update to L2 norm ``C``, and Gaussian
noise of standard deviation ``noise_multiplier * C`` goes onto the sum. One
round is a Poisson-sampled Gaussian mechanism on the set of devices; ``rounds``
of them compose. The RDP accountant turns that into epsilon at ``delta``.
Sampling a fixed number of devices rather than each with probability ``q`` is
what every deployed DP-FedAvg does and accounts as Poisson (the usual
approximation; say so where the figure is shown).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import ConfigError

__all__ = ["PrivacyAccountant", "PrivacyLedger", "epsilon_of", "epsilon_spent"]

# RDP orders: integers (closed form, fast); the fractional ones dp-accounting computes slowly (and warns about)
# matter only for noise multipliers far below the ones DP-FedAvg uses.
_ORDERS = (*range(2, 33), 40, 48, 64, 96, 128, 192, 256)


def epsilon_spent(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` Poisson-sampled Gaussian rounds (``inf`` without noise)."""
    if not noise_multiplier > 0:
        return math.inf
    if rounds == 0:
        return 0.0
    import dp_accounting
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant(orders=list(_ORDERS))
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class PrivacyAccountant:
    """What one run spends, round by round, and whether the next round would overrun the budget."""

    noise_multiplier: float
    sampling_rate: float  # devices picked per round / devices in the fleet
    delta: float = 1e-5
    budget: float | None = None  # epsilon after which no round opens

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0 or not math.isfinite(self.noise_multiplier):
            raise ConfigError(f"the noise multiplier must be a positive number, got {self.noise_multiplier}")
        if not 0 < self.sampling_rate <= 1:
            raise ConfigError(f"the sampling rate must be in (0, 1], got {self.sampling_rate}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"the privacy budget must be a positive epsilon, got {self.budget}")

    def epsilon(self, rounds: int) -> float:
        return epsilon_spent(self.noise_multiplier, self.sampling_rate, rounds, self.delta)

    def may_open(self, rounds_done: int) -> bool:
        """Whether one more round stays within the budget (always, without one)."""
        return self.budget is None or self.epsilon(rounds_done + 1) <= self.budget


def epsilon_of(events: Sequence[tuple[float, float]], delta: float) -> float:
    """Epsilon at ``delta`` after rounds of (noise multiplier, sampling rate) each, composed by the RDP
    accountant (rounds of the same pair are composed together: a long run stays fast)."""
    if not events:
        return 0.0
    if any(not z > 0 for z, _ in events):
        return math.inf
    import dp_accounting
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant(orders=list(_ORDERS))
    for (z, q), count in sorted(Counter(events).items()):
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), count)
    return float(accountant.get_epsilon(delta))


@dataclass
class PrivacyLedger:
    """What a run has spent, round by round: each released sum's noise multiplier (as it was: a secure round
    that lost devices carries less noise than planned) and sampling rate, kept in the journal's round reports."""

    delta: float
    budget: float | None = None
    events: list[tuple[float, float]] = field(default_factory=list)

    def epsilon(self) -> float:
        return epsilon_of(self.events, self.delta)

    def may_open(self, noise_multiplier: float, sampling_rate: float) -> bool:
        """Whether one more round like this one stays within the budget (always, without one)."""
        return self.budget is None or epsilon_of([*self.events, (noise_multiplier, sampling_rate)], self.delta) <= (
            self.budget
        )

    def spend(self, noise_multiplier: float, sampling_rate: float) -> float:
        """Record a released sum; the epsilon spent so far."""
        self.events.append((round(noise_multiplier, 9), round(sampling_rate, 9)))
        return self.epsilon()

    def restore(self, reports: Sequence[Mapping[str, Any]]) -> None:
        """The rounds a restarted server had released (their reports, oldest first)."""
        for report in reports:
            z, q = report.get("dp_noise_multiplier"), report.get("dp_sampling_rate")
            if isinstance(z, (int, float)) and isinstance(q, (int, float)) and z > 0 and 0 < q <= 1:
                self.events.append((float(z), float(q)))

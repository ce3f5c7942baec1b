"""What secure aggregation and client-level DP ask of a round, and what a private round spends.

The coordinator asks this once per round: what each task must carry (the cap a device weighs itself by, the
clipping norm and noise), whether one more round stays within the privacy budget, the noise a trusted server
adds to the sum, and the figures a released sum spends (through :class:`PrivacyLedger`, dp-accounting's RDP
accountant).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from protocol import TensorDict, TrainConfig, clip_update, noise_share

from ..learning._accountant import PrivacyLedger
from ..learning._aggregation import Accumulator
from ._config import PrivacyConfig
from ._secure_round import MIN_PARTICIPANTS

__all__ = ["RoundPrivacy"]

log = logging.getLogger("genfl.server")

# Above this many clipping norms of noise on a round's mean a run learned nothing on the benchmark (the 24k-parameter
# CNN, 100 devices, epsilon 8: 4.4); the 2.4k-parameter MLP learned at 1.4 (docs/benchmarks.md).
NOISY_MEAN = 3.0


class RoundPrivacy:
    def __init__(self, secure_aggregation: bool, dp: PrivacyConfig | None, min_devices: int) -> None:
        self.secure_aggregation = secure_aggregation
        self.dp = dp
        self.ledger = None if dp is None else PrivacyLedger(dp.delta, dp.budget)  # what the run has spent
        # under secure aggregation each device adds a share of the noise: the fewest a round may keep
        self.shares = max(min_devices, MIN_PARTICIPANTS)
        self._noise = np.random.default_rng()  # a trusted server's noise (fresh: never replayed from a seed)
        self._warned = False

    def restore(self, reports: Sequence[Mapping[str, Any]]) -> None:
        if self.ledger is not None:
            self.ledger.restore(reports)

    def configs(self, configs: dict[str, TrainConfig], cap: int | None) -> dict[str, TrainConfig]:
        """The round's configs with what secure aggregation and DP ask of each device."""
        if self.secure_aggregation:  # each device weighs its own update: the cap goes with the task
            configs = {d: replace(c, secure_aggregation=True, weight_cap=cap) for d, c in configs.items()}
        dp = self.dp
        if dp is not None:
            shares = self.shares if self.secure_aggregation else 0
            configs = {d: replace(c, clip_norm=dp.clip_norm, noise_multiplier=dp.noise_multiplier,
                                  noise_shares=shares) for d, c in configs.items()}  # fmt: skip
        return configs

    def noise_on_mean(self, template: TensorDict, devices: int) -> float | None:
        """The noise on the mean of ``devices`` updates as a multiple of the clipping norm (the most one update can
        move it): ``z * sqrt(parameters) / devices``. None without DP."""
        if self.dp is None or devices < 1:
            return None
        parameters = sum(a.size for a in template.values() if np.issubdtype(a.dtype, np.floating))
        return self.dp.noise_multiplier * math.sqrt(parameters) / devices

    def warn_if_noisy(self, round_number: int, template: TensorDict, devices: int) -> None:
        """Tell the operator once when the noise will bury the rounds' signal (it says why a private run learns
        nothing, and what changes that)."""
        if self._warned:
            return  # (and no count of the model's parameters every round)
        ratio = self.noise_on_mean(template, devices)
        if ratio is None or ratio <= NOISY_MEAN:
            return
        self._warned = True
        log.warning("round %d: the DP noise on the mean of %d updates is %.1f times the clipping norm; above %g a "
                    "run learns little: more devices a round, or a model with fewer parameters and no BatchNorm "
                    "(docs/security.md)", round_number, devices, ratio, NOISY_MEAN)  # fmt: skip

    def refusal(self, sampling_rate: float) -> str | None:
        """Why no round may open (one more would spend past the budget), or None."""
        if self.ledger is None or self.dp is None or self.ledger.may_open(self.dp.noise_multiplier, sampling_rate):
            return None
        spent, budget = self.ledger.epsilon(), self.ledger.budget
        return f"the privacy budget is spent: epsilon {spent:.3g} of {budget:g}; another round would pass it"

    @property
    def weighs_alike(self) -> bool:
        """DP-FedAvg: every update counts the same, so that one device moves the sum by at most the clip."""
        return self.dp is not None

    def clipped(self, delta: TensorDict) -> TensorDict:
        """A decoded update clipped again here: the bound the noise is calibrated to holds whatever was sent."""
        return delta if self.dp is None else clip_update(delta, self.dp.clip_norm)[0]

    def add_server_noise(self, updates: Accumulator, template: TensorDict) -> None:
        """The trusted server's noise on the sum (under secure aggregation the devices added it)."""
        dp = self.dp
        if dp is not None and not self.secure_aggregation:
            updates.add_noise(noise_share(template, dp.noise_multiplier, dp.clip_norm, 1, self._noise))

    def spend(self, sampling_rate: float, survivors: int | None) -> dict[str, Any]:
        """The figures of a released sum (``survivors``: the devices whose shares of the noise are in it, under
        secure aggregation): its noise as it was, and the epsilon spent so far."""
        dp = self.dp
        if self.ledger is None or dp is None:
            return {}
        z = dp.noise_multiplier
        if survivors is not None:  # fewer shares than planned carry less noise, more carry more
            z *= math.sqrt(survivors / self.shares)
        epsilon = self.ledger.spend(z, sampling_rate)
        return {"dp_noise_multiplier": round(z, 9), "dp_sampling_rate": round(sampling_rate, 9),
                "dp_epsilon": epsilon, "dp_delta": dp.delta}  # fmt: skip

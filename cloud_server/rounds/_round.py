"""A round as one object: what it asked of whom, what came back, and the one fold of an accepted update (accept,
resume after a restart) and its unfold (a device revoked mid-round); and the round's result."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import TensorDict, TrainConfig

from ..learning._aggregation import Accumulator
from ..learning._strategy import FitResult, RoundResults
from ._journal import AcceptedUpdate
from ._limits import ByteBudget
from ._secure_round import SecureRound

__all__ = ["OpenRound", "RoundHooks", "RoundResult", "scaled_counts", "weight_cap"]


@dataclass(frozen=True)
class RoundResult:
    round: int
    selected: int
    devices: int  # updates accepted into the model
    accuracy: float | None
    loss: float | None
    train_loss: float
    seconds: float
    bytes_up: int
    bytes_down: int
    # The model the round started from, on the devices' own data (their reports before training, weighted)
    device_accuracy: float | None = None
    # The strategy's own figures of the round (GenFL: what it sent of synthetic data, "bytes", and the server
    # seconds it spent, "generator_s"); what the journal keeps as the round's report
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # the boards' failure reasons this round, counted


@dataclass(frozen=True)
class RoundHooks:
    """Who is told as rounds go (the metrics, a progress bar); every one optional."""

    on_round_opened: Callable[[int, int], None] | None = None  # (round, devices picked)
    on_update_accepted: Callable[[str], None] | None = None  # (device id)
    on_round_closed: Callable[[RoundResult], None] | None = None


@dataclass
class OpenRound:
    number: int
    configs: dict[str, TrainConfig]
    updates: Accumulator
    started: float
    bytes_up_at_start: int
    bytes_down_at_start: int
    fits: dict[str, FitResult] = field(default_factory=dict)  # per accepted device: what it reported
    failed: set[str] = field(default_factory=set)
    reasons: dict[str, str] = field(default_factory=dict)  # per failed device: its reason (first line)
    synthetic: dict[str, tuple[str, int]] = field(default_factory=dict)  # device -> (blob id, size)
    plan_metrics: dict[str, Any] = field(default_factory=dict)  # the strategy's figures of planning the round
    weight_cap: int | None = None  # no update counts more than this many samples
    sampling_rate: float = 1.0  # devices picked / online when it opened (what DP's accountant needs)
    budgets: dict[str, ByteBudget] = field(default_factory=dict)  # per device: blob bytes it may still ask for
    heard: dict[str, float] = field(default_factory=dict)  # per device: last task sent to it or word from it
    resend_after: dict[str, float] = field(default_factory=dict)  # per device: silence before its next re-send
    resent_on_return: dict[str, float] = field(default_factory=dict)  # per device: when it came back, got its task
    working: dict[str, float] = field(default_factory=dict)  # per device: seconds its job has run, as it said
    # Secure aggregation: the round's exchange, and once unmasked whose updates are in the sum and the weighted
    # means of the figures (no device's own figures are known)
    secure: SecureRound | None = None
    secure_accepted: frozenset[str] = frozenset()
    pooled: dict[str, float | None] | None = None

    def weight(self, claimed: int) -> int:
        return claimed if self.weight_cap is None else min(claimed, self.weight_cap)

    def fold(
        self,
        update: AcceptedUpdate,
        delta: TensorDict,
        label_counts: tuple[float, ...] | None = None,
        probe_scores: tuple[int, ...] | None = None,
    ) -> None:
        """Count an accepted update in the round: the one place that does (accept, resume after a restart)."""
        self.updates.add(delta, update.num_samples, key=update.device_id)
        self.fits[update.device_id] = FitResult(
            num_samples=update.num_samples,
            train_loss=update.train_loss,
            train_accuracy=update.train_accuracy,
            eval_accuracy=update.eval_accuracy,
            label_counts=label_counts,
            probe_scores=probe_scores,
        )

    def unfold(self, update: AcceptedUpdate, delta: TensorDict) -> None:
        """Take an update that :meth:`fold` counted back out of the round (a device revoked mid-round)."""
        self.updates.remove(delta, update.num_samples, key=update.device_id)
        del self.fits[update.device_id]

    def results(self) -> RoundResults:
        """What the strategy aggregates: the folded deltas and, per accepted device, what it reported."""
        return RoundResults(self.number, self.updates, dict(self.fits), self.pooled)

    @property
    def accepted(self) -> set[str]:
        return set(self.fits) | self.secure_accepted

    @property
    def answered(self) -> set[str]:
        return self.accepted | self.failed


def weight_cap(claims: list[int], ratio: float | None) -> int | None:
    """``ratio`` times the median claimed sample count (at least 1); None without a ratio or claims."""
    if ratio is None or not claims:
        return None
    return max(1, math.ceil(ratio * float(np.median(claims))))


def scaled_counts(counts: tuple[float, ...] | None, claimed: int, weight: int) -> tuple[float, ...] | None:
    """Label counts scaled with a capped weight, so that they keep adding up to what the device counts for."""
    if counts is None or weight == claimed or claimed == 0:
        return counts
    return tuple(c * weight / claimed for c in counts)

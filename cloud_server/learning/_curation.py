"""The fleet curates a synthetic pool it never sees the making of: pure arithmetic on the devices' verdicts.

The server cannot tell a pool image of a "horse" from a mislabelled dog or an
image in another style: it holds no real data. The devices can, for the
classes they hold. With ``--pool-probes N`` each picked device is sent N pool
images (probes) of classes it holds, scores them after training with its own
model (the probability of the class each probe claims) and returns the scores
in its update. The server keeps, per image, the sum of its scores and the
number of judges, and per class the devices' mean verdict. From these:

* :meth:`PoolVerdicts.weights`: the chance an image is drawn for a device's batch, its mean score shrunk towards
  its class's mean (an image few devices judged counts as an average image of its class) and raised to a power
  (images the devices reject are drawn rarely, a clear rejection never), on top of the global model's score;
* :meth:`PoolVerdicts.agreement`: the devices' mean verdict over recent rounds, reported with each round.

A verdict costs a device one forward pass over its probes and about one byte
per probe; it reveals what its model predicts on server-chosen images, which
the server could compute from the update itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CurationConfig", "PoolVerdicts", "held_classes", "pick_probes"]


@dataclass(frozen=True)
class CurationConfig:
    """The verdicts' arithmetic (``probes`` and ``sharpness`` come from GenflConfig's pool settings)."""

    probes: int = 0  # probe images per picked device and round
    sharpness: float = 2.0  # draw chance ~ (shrunk score) ** sharpness
    prior_votes: float = 1.0  # an image's mean score is shrunk towards its class's as if by this many votes
    reject_below: float = 0.05  # an image judged by 2+ devices with a mean score below this is never drawn
    held_share: float = 0.05  # a device "holds" a class with at least this share of its samples (and 5 samples)


def held_classes(label_counts: np.ndarray | None, share: float) -> np.ndarray:
    """Class indices a device holds enough of to judge images of them (none without label counts)."""
    if label_counts is None:
        return np.zeros(0, dtype=np.int64)
    counts = np.clip(np.asarray(label_counts, dtype=np.float64), 0.0, None)
    total = counts.sum()
    return np.flatnonzero((counts >= 5) & (counts >= share * total)) if total > 0 else np.zeros(0, np.int64)


@dataclass
class PoolVerdicts:
    """What the devices said of the pool: per image (by name) and per class, the sum of the 0..255 scores and
    how many verdicts; per round, the same for all. Integer sums: the same verdicts in any arrival order give the
    same figures (a simulation and a real fleet draw alike)."""

    score_sum: dict[str, int] = field(default_factory=dict)
    votes: dict[str, int] = field(default_factory=dict)
    class_sum: dict[int, int] = field(default_factory=dict)
    class_votes: dict[int, int] = field(default_factory=dict)
    by_round: dict[int, tuple[int, int]] = field(default_factory=dict)  # round -> (score sum, verdicts)

    def record(
        self, round_number: int, names: Sequence[str], labels: Sequence[int], scores: Sequence[int], sign: int = 1
    ) -> None:
        """One device's verdicts: ``scores[i]`` (0..255) for image ``names[i]`` of class ``labels[i]``; with
        ``sign`` -1, take the same verdicts back (the device was revoked)."""
        for name, label, score in zip(names, labels, scores):
            self.score_sum[name] = self.score_sum.get(name, 0) + sign * score
            self.votes[name] = self.votes.get(name, 0) + sign
            self.class_sum[int(label)] = self.class_sum.get(int(label), 0) + sign * score
            self.class_votes[int(label)] = self.class_votes.get(int(label), 0) + sign
        total, count = self.by_round.get(round_number, (0, 0))
        self.by_round[round_number] = (total + sign * sum(scores), count + sign * len(scores))

    def agreement(self, since_round: int) -> float | None:
        """The devices' mean verdict (0..1) over the rounds since ``since_round`` (None: none given)."""
        picked = [v for r, v in self.by_round.items() if r >= since_round]
        count = sum(c for _, c in picked)
        return sum(t for t, _ in picked) / 255.0 / count if count else None

    def class_means(self, num_classes: int) -> np.ndarray:
        """Every class's mean verdict (0..1; NaN where none)."""
        return np.array([self.class_sum[c] / 255.0 / self.class_votes[c] if self.class_votes.get(c) else np.nan
                         for c in range(num_classes)])  # fmt: skip

    def weights(self, names: Sequence[str], class_mean: float, config: CurationConfig) -> np.ndarray:
        """Draw weights for a class's images: shrunk mean score ** sharpness, 0 for clear rejects."""
        prior = class_mean if np.isfinite(class_mean) else 0.5
        sums = np.array([self.score_sum.get(n, 0) for n in names], dtype=np.float64) / 255.0
        votes = np.array([self.votes.get(n, 0) for n in names], dtype=np.float64)
        shrunk = (sums + config.prior_votes * prior) / (votes + config.prior_votes)
        weights = np.maximum(shrunk, 1e-3) ** config.sharpness
        rejected = (votes >= 2) & (sums / np.maximum(votes, 1) < config.reject_below)
        return np.where(rejected, 0.0, weights)


def pick_probes(held: np.ndarray, names: Mapping[int, Sequence[str]], votes: Mapping[str, int], count: int,
                rng: np.random.Generator) -> list[tuple[int, int]]:  # fmt: skip
    """Up to ``count`` (class, image index) pairs spread over the ``held`` classes, least-judged images first."""
    if count <= 0 or len(held) == 0:
        return []
    picked: list[tuple[int, int]] = []
    shares = np.full(len(held), count // len(held))
    shares[: count - int(shares.sum())] += 1
    for label, share in zip(held, shares):
        members = names.get(int(label), ())
        if share == 0 or not members:
            continue
        judged = np.array([votes.get(n, 0) for n in members], dtype=np.float64)
        order = np.lexsort((rng.random(len(members)), judged))  # fewest votes first, ties at random
        picked += [(int(label), int(i)) for i in order[: int(share)]]
    return picked

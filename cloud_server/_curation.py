"""The fleet curates a synthetic pool it never sees the making of: pure arithmetic on the devices' verdicts.

The server cannot tell a pool image of a "horse" from a mislabelled dog or an
image in another style: it holds no real data. The devices can, for the
classes they hold. So each picked device is sent a few pool images (probes) of
classes it holds, scores them after training with its own model (the
probability of the class each probe claims) and returns the scores in its
update. The server keeps, per image, the sum of its scores and the number of
judges, and per class the fleet's mean verdict. From these:

* :meth:`PoolVerdicts.weights`: the chance an image is drawn for a device's batch, its mean score shrunk towards
  its class's mean (an image few devices judged counts as an average image of its class) and raised to a power
  (images the fleet rejects are drawn rarely, a clear rejection never);
* :meth:`PoolVerdicts.agreement`: the fleet's verdict on a class, or the pool (the mean score, over recent
  rounds): the evidence the synthetic weight follows.

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
    probes: int = 64  # probe images per picked device and round (0: no curation)
    prior_votes: float = 1.0  # an image's mean score is shrunk towards its class's as if by this many votes
    sharpness: float = 2.0  # draw chance ~ (shrunk score) ** sharpness
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
    """Per pool image (by name), the sum of the scores the fleet gave it and how many devices judged it."""

    score_sum: dict[str, float] = field(default_factory=dict)
    votes: dict[str, int] = field(default_factory=dict)
    recent: list[tuple[int, int, float]] = field(default_factory=list)  # (round, class, score) of recent verdicts

    def record(self, round_number: int, names: Sequence[str], labels: Sequence[int], scores: Sequence[int]) -> None:
        """One device's verdicts: ``scores[i]`` (0..255) for image ``names[i]`` of class ``labels[i]``."""
        for name, label, raw in zip(names, labels, scores):
            score = raw / 255.0
            self.score_sum[name] = self.score_sum.get(name, 0.0) + score
            self.votes[name] = self.votes.get(name, 0) + 1
            self.recent.append((round_number, int(label), score))

    def agreement(self, since_round: int, label: int | None = None) -> float | None:
        """The fleet's mean score of the verdicts given since ``since_round`` (of one class, or all)."""
        scores = [s for r, c, s in self.recent if r >= since_round and (label is None or c == label)]
        return float(np.mean(scores)) if scores else None

    def class_means(self, num_classes: int) -> np.ndarray:
        """Every class's mean score over all verdicts (NaN where none)."""
        sums, counts = np.zeros(num_classes), np.zeros(num_classes)
        for _, label, score in self.recent:
            sums[label] += score
            counts[label] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def weights(self, names: Sequence[str], class_mean: float, config: CurationConfig) -> np.ndarray:
        """Draw weights for a class's images: shrunk mean score ** sharpness, 0 for clear rejects."""
        prior = class_mean if np.isfinite(class_mean) else 0.5
        sums = np.array([self.score_sum.get(n, 0.0) for n in names])
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

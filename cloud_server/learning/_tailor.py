"""Which synthetic samples a device gets: pure arithmetic on its (possibly noised) label counts."""

from __future__ import annotations

import math

import numpy as np

from protocol import ConfigError

__all__ = ["synthetic_counts"]


def synthetic_counts(
    label_counts: np.ndarray | None,
    num_samples: int,
    num_classes: int,
    *,
    share: float,
    max_samples: int,
    min_per_class: int = 16,
    every_class: float = 0.0,
) -> np.ndarray:
    """Synthetic samples per class for one device: its lacking classes filled up to a target share.

    A class is filled up to ``share * num_samples / num_classes`` samples (``share`` = 1: as
    many as a balanced data set of the device's size would hold); a class that lacks any gets
    at least ``min_per_class``, so that a small device still gets a varied batch. Classes the
    device holds enough of get none. Without counts (the device does not share them) every class gets
    the same number. ``every_class`` > 0 gives every class, held ones too, at least that share of the
    target (so that the synthetic images' look is no cue to which classes a device lacks). The total is
    cut to ``max_samples`` (the byte budget), class by class in proportion to the deficits. Noisy counts
    are clipped at zero.
    """
    if not 0.0 < share <= 10.0:
        raise ConfigError(f"synthetic share must be in (0, 10], got {share}")
    if not 0.0 <= every_class <= 1.0:
        raise ConfigError(f"the every-class share must be in [0, 1], got {every_class}")
    if max_samples < 0 or num_classes < 1:
        raise ConfigError("max samples must be >= 0 and classes >= 1")
    target = share * max(num_samples, 0) / num_classes
    if label_counts is None or len(label_counts) != num_classes:
        deficit = np.full(num_classes, max(math.ceil(target), min_per_class), dtype=np.int64)
    else:
        counts = np.clip(np.asarray(label_counts, dtype=np.float64), 0.0, None)
        deficit = np.ceil(np.clip(target - counts, 0.0, None)).astype(np.int64)
        deficit = np.where(deficit > 0, np.maximum(deficit, min_per_class), 0)
        if every_class > 0:
            deficit = np.maximum(deficit, math.ceil(every_class * target))
    total = int(deficit.sum())
    if total <= max_samples:
        return deficit
    scaled = deficit * (max_samples / total)
    out = np.floor(scaled).astype(np.int64)
    remainder = max_samples - int(out.sum())
    for index in np.argsort(-(scaled - out), kind="stable")[:remainder]:  # largest remainders first
        out[index] += 1
    return out

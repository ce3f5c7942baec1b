"""Client-level differential privacy on an update: clipping to a norm, and a device's share of the noise.

DP-FedAvg bounds what one device can move the sum (its update clipped to L2
norm ``clip``, every device weighted the same) and hides it under Gaussian noise
of standard deviation ``noise_multiplier * clip`` on the sum. With secure
aggregation the server never sees a sum without its noise, so the devices add
it: each of the ``shares`` expected participants adds an independent Gaussian
of variance ``(noise_multiplier * clip)**2 / shares``, which sums to the whole.
A round that loses devices carries less noise than planned, so ``shares`` is
the fewest devices a round may close with (``min_devices``), not the number
picked: more survivors only add noise.

Integer buffers (BatchNorm's step counter) are not learned: their delta says
how many steps the device took, so under DP it is zeroed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ._errors import ConfigError

__all__ = ["clip_update", "noise_share"]


def _check(clip: float) -> None:
    if not clip > 0 or not math.isfinite(clip):
        raise ConfigError(f"the clipping norm must be a positive number, got {clip}")


def clip_update(delta: Mapping[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """``delta`` scaled to L2 norm at most ``clip`` over all its floating tensors together (integer buffers
    zeroed), and the norm it had."""
    _check(clip)
    floats = {name: np.asarray(a, dtype=np.float64) for name, a in delta.items() if np.issubdtype(a.dtype, np.floating)}
    norm = math.sqrt(sum(float(np.square(a).sum()) for a in floats.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    clipped = {}
    for name, array in delta.items():
        if name in floats:
            clipped[name] = (floats[name] * scale).astype(array.dtype)
        else:
            clipped[name] = np.zeros_like(array)
    return clipped, norm


def noise_share(
    template: Mapping[str, np.ndarray], noise_multiplier: float, clip: float, shares: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One device's Gaussian share for every floating tensor of ``template`` (zeros for integer buffers)."""
    _check(clip)
    if not noise_multiplier >= 0 or shares < 1:
        raise ConfigError("the noise multiplier must be 0 or more, and the shares at least 1")
    sigma = noise_multiplier * clip / math.sqrt(shares)
    return {
        name: (rng.normal(0.0, sigma, size=a.shape).astype(a.dtype) if np.issubdtype(a.dtype, np.floating)
               else np.zeros_like(a))
        for name, a in template.items()
    }  # fmt: skip

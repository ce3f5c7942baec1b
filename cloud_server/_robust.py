"""Robust aggregation for fleets that may hold faulty or malicious devices.

Plain FedAvg lets one device with a huge or sign-flipped update drag the model
anywhere. These rules bound what a minority can do, at a price: they need all
of a round's updates at once (memory grows with the number of devices, unlike
the streaming FedAvg sum) and, on non-IID data, they give honest but unusual
devices less say.

* ``median``: coordinate-wise median of the deltas (Yin et al. 2018).
* ``trimmed-mean``: per coordinate, drop the ``trim`` share of largest and of
  smallest values, average the rest (Yin et al. 2018).
* ``clipped``: scale each delta down to at most the round's median update
  norm, then the sample-weighted mean (norm clipping as in Sun et al. 2019,
  with the bound computed from the round).

All three sort updates by device id before stacking, so the result does not
depend on arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from protocol import ConfigError, ProtocolError, TensorDict

from ._aggregation import check_update_shapes

__all__ = ["AGGREGATORS", "BufferedUpdates", "robust_aggregate"]

AGGREGATORS = ("fedavg", "median", "trimmed-mean", "clipped")


def _norm(delta: Mapping[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in delta.values()))


def robust_aggregate(
    method: str, deltas: list[Mapping[str, np.ndarray]], weights: list[int], trim: float = 0.2
) -> dict[str, np.ndarray]:
    """The aggregate delta (float64 per tensor) of ``deltas`` by ``method``; a pure function."""
    if not deltas:
        raise ValueError("nothing to aggregate")
    names = list(deltas[0])
    if method == "clipped":
        norms = [_norm(d) for d in deltas]
        bound = float(np.median(norms))
        scales = [1.0 if n <= bound or n == 0 else bound / n for n in norms]
        total = float(sum(weights))
        clipped = {}
        for name in names:
            acc = np.zeros(np.shape(deltas[0][name]), dtype=np.float64)
            for delta, scale, weight in zip(deltas, scales, weights):
                acc += np.asarray(delta[name], np.float64) * (scale * weight)
            clipped[name] = acc / total
        return clipped
    out = {}
    for name in names:
        stacked = np.stack([np.asarray(d[name], dtype=np.float64) for d in deltas])  # (devices, *shape)
        if method == "median":
            out[name] = np.median(stacked, axis=0)
        elif method == "trimmed-mean":
            k = math.floor(trim * len(deltas))
            ordered = np.sort(stacked, axis=0)
            out[name] = ordered[k : len(deltas) - k].mean(axis=0)
        else:
            raise ConfigError(f"unknown aggregation {method!r}; use one of {', '.join(AGGREGATORS)}")
    return out


class BufferedUpdates:
    """Same interface as :class:`WeightedDeltaSum`, but keeps every update for a robust rule."""

    def __init__(self, template: Mapping[str, np.ndarray], method: str, trim: float = 0.2) -> None:
        if method not in AGGREGATORS[1:]:
            raise ConfigError(f"unknown robust aggregation {method!r}")
        if not 0.0 <= trim < 0.5:
            raise ConfigError(f"trim must be in [0, 0.5), got {trim}")
        self._template = {name: np.empty(a.shape, a.dtype) for name, a in template.items()}
        self.method = method
        self.trim = trim
        self._updates: dict[str, tuple[dict[str, np.ndarray], int]] = {}
        self.total_weight = 0
        self.count = 0

    def add(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or weight < 1:
            raise ProtocolError("bad-weight", f"weight must be a positive integer, got {weight!r}")
        check_update_shapes(self._template, delta)
        self._updates[key if key is not None else f"#{self.count:09d}"] = (
            {n: np.array(a) for n, a in delta.items()},
            int(weight),
        )
        self.total_weight += int(weight)
        self.count += 1

    def mean(self) -> TensorDict:
        """The robust aggregate delta (zeros when nothing was added)."""
        if not self._updates:
            return {name: np.zeros(a.shape, dtype=np.float64) for name, a in self._template.items()}
        keys = sorted(self._updates)
        return robust_aggregate(
            self.method, [self._updates[k][0] for k in keys], [self._updates[k][1] for k in keys], self.trim
        )

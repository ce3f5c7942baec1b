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
* ``filtered-mean``: drop every update whose parameters lie farther than
  three median distances from the coordinate-wise median (a sign-flipped,
  scaled or noised update is far out), then the weighted mean of the rest,
  each weight capped at the round's median claim. Measured the best here on
  non-IID digits under attack (docs/benchmarks.md); an attacker who stays
  inside the bound moves the result by at most its share of three median
  distances.
* ``centered-clip``: centered clipping (Karimireddy, He and Jaggi 2021),
  made for non-IID fleets: start from the coordinate-wise median, then a few
  times move by the mean of every update's difference from the current
  estimate, each difference clipped to the median distance. An attacker moves
  the result by at most that radius divided by the number of updates, while
  honest but unusual devices keep their say (they are clipped, not dropped).

``bucket_size`` > 1 first averages the updates in random buckets of that size
(Karimireddy, He and Jaggi 2022, "bucketing"): bucket means of non-IID devices
are more alike than the devices, so the robust rule throws away less honest
signal. The buckets are drawn from the sorted device ids, so they do not depend
on arrival order either.

All rules sort updates by device id before stacking, so the result does not
depend on arrival order, and none but ``clipped`` trusts a device's claimed
sample count.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from enum import Enum

import numpy as np

from protocol import ConfigError, ProtocolError, TensorDict

from ._aggregation import check_update_shapes, l2_norm

__all__ = ["AGGREGATORS", "Aggregation", "BufferedUpdates", "robust_aggregate"]


class Aggregation(str, Enum):
    FEDAVG = "fedavg"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed-mean"
    CLIPPED = "clipped"
    CENTERED_CLIP = "centered-clip"
    FILTERED_MEAN = "filtered-mean"


AGGREGATORS = tuple(a.value for a in Aggregation)
_CC_ITERATIONS = 3
_FILTER_BOUND = 3.0  # filtered-mean drops updates farther than this many median distances from the median
_STATISTICS = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def _centered_clip(deltas: list[Mapping[str, np.ndarray]], names: list[str]) -> dict[str, np.ndarray]:
    center = {n: np.median(np.stack([np.asarray(d[n], np.float64) for d in deltas]), axis=0) for n in names}
    differences = [{n: np.asarray(d[n], np.float64) - center[n] for n in names} for d in deltas]
    radius = float(np.median([l2_norm(diff) for diff in differences]))
    for _ in range(_CC_ITERATIONS):
        step = {n: np.zeros_like(center[n]) for n in names}
        for delta in deltas:
            diff = {n: np.asarray(delta[n], np.float64) - center[n] for n in names}
            norm = l2_norm(diff)
            scale = 1.0 if norm <= radius or norm == 0 else radius / norm
            for n in names:
                step[n] += diff[n] * scale
        center = {n: center[n] + step[n] / len(deltas) for n in names}
    return center


def _filtered_mean(
    deltas: list[Mapping[str, np.ndarray]], weights: list[int], names: list[str]
) -> dict[str, np.ndarray]:
    center = {n: np.median(np.stack([np.asarray(d[n], np.float64) for d in deltas]), axis=0) for n in names}
    params = [n for n in names if n.rsplit(".", 1)[-1] not in _STATISTICS]
    distances = [l2_norm({n: np.asarray(d[n], np.float64) - center[n] for n in params}) for d in deltas]
    bound = _FILTER_BOUND * float(np.median(distances))
    kept = [i for i, distance in enumerate(distances) if distance <= bound]
    cap = float(np.median(weights))  # a claimed sample count counts for at most the median claim
    capped = [min(float(w), cap) for w in weights]
    total = sum(capped[i] for i in kept)
    out = {}
    for n in names:
        acc = np.zeros(np.shape(deltas[0][n]), dtype=np.float64)
        for i in kept:
            acc += np.asarray(deltas[i][n], np.float64) * (capped[i] / total)
        out[n] = acc
    return out


def _buckets(deltas: list[Mapping[str, np.ndarray]], weights: list[int], keys: list[str], size: int,
             ) -> tuple[list[Mapping[str, np.ndarray]], list[int]]:  # fmt: skip
    """Means of random buckets of ``size`` updates, the permutation drawn from the device ids."""
    seed = int.from_bytes(hashlib.sha256("|".join(keys).encode()).digest()[:8], "little")
    order = np.random.default_rng(seed).permutation(len(deltas))
    means: list[Mapping[str, np.ndarray]] = []
    totals: list[int] = []
    for start in range(0, len(order), size):
        members = order[start : start + size]
        means.append({n: np.mean([np.asarray(deltas[i][n], np.float64) for i in members], axis=0)
                      for n in deltas[0]})  # fmt: skip
        totals.append(sum(weights[i] for i in members))
    return means, totals


def robust_aggregate(
    method: str,
    deltas: list[Mapping[str, np.ndarray]],
    weights: list[int],
    trim: float = 0.2,
    *,
    bucket_size: int = 1,
    keys: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """The aggregate delta (float64 per tensor) of ``deltas`` by ``method``; a pure function.

    ``keys`` (the device ids, in the order of ``deltas``) seed the buckets when ``bucket_size`` > 1.
    """
    if not deltas:
        raise ValueError("nothing to aggregate")
    if bucket_size > 1 and len(deltas) > bucket_size:
        deltas, weights = _buckets(deltas, weights, keys or [str(i) for i in range(len(deltas))], bucket_size)
    names = list(deltas[0])
    if method == "filtered-mean":
        return _filtered_mean(deltas, weights, names)
    if method == "centered-clip":
        # BatchNorm statistics are not gradients and live on other scales (a variance must stay positive):
        # they take the coordinate-wise median; the trained parameters are clipped around their centre.
        statistics = [n for n in names if n.rsplit(".", 1)[-1] in _STATISTICS]
        out = _centered_clip(deltas, [n for n in names if n not in statistics])
        for name in statistics:
            out[name] = np.median(np.stack([np.asarray(d[name], np.float64) for d in deltas]), axis=0)
        return out
    if method == "clipped":
        norms = [l2_norm(d) for d in deltas]
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

    def __init__(
        self, template: Mapping[str, np.ndarray], method: str, trim: float = 0.2, bucket_size: int = 1
    ) -> None:
        if method not in AGGREGATORS[1:]:
            raise ConfigError(f"unknown robust aggregation {method!r}")
        if not 0.0 <= trim < 0.5:
            raise ConfigError(f"trim must be in [0, 0.5), got {trim}")
        self._template = {name: np.empty(a.shape, a.dtype) for name, a in template.items()}
        self.method = method
        self.trim = trim
        if bucket_size < 1:
            raise ConfigError(f"bucket size must be at least 1, got {bucket_size}")
        self.bucket_size = bucket_size
        self._updates: dict[str, tuple[dict[str, np.ndarray], int]] = {}
        self.total_weight = 0
        self.count = 0

    def add_noise(self, noise: Mapping[str, np.ndarray]) -> None:
        """A robust rule's result is no sum that noise calibrated to one update's reach would hide."""
        raise ConfigError(f"the {self.method} rule does not run with differential privacy")

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

    def remove(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None:
        """Take back the update added under ``key``."""
        del delta
        _, added = self._updates.pop(str(key))
        self.total_weight -= added
        self.count -= 1
        assert added == weight, (added, weight)

    def mean(self) -> TensorDict:
        """The robust aggregate delta (zeros when nothing was added)."""
        if not self._updates:
            return {name: np.zeros(a.shape, dtype=np.float64) for name, a in self._template.items()}
        keys = sorted(self._updates)
        return robust_aggregate(
            self.method, [self._updates[k][0] for k in keys], [self._updates[k][1] for k in keys], self.trim,
            bucket_size=self.bucket_size, keys=keys,
        )  # fmt: skip

"""Aggregation arithmetic: pure functions and one streaming accumulator.

FedAvg's new global model is ``global + sum_i(n_i * delta_i) / sum_i(n_i)``.

The server adds each update to a running sum as it arrives, so its memory
does not grow with the number of devices. To make the result independent of
arrival order (network retries reorder messages; the in-memory and MQTT
transports deliver in different orders), each weighted term is rounded once
to a fixed-point integer (``2**-24`` resolution) and summed in int64, which
is exactly associative. ``float32 * weight`` is exact in float64, so the only
rounding happens per term, before the sum, and cannot depend on order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from protocol import ProtocolError, TensorDict
from protocol.secagg import FIXED_POINT_BITS, fixed_point_terms

__all__ = [
    "FIXED_POINT_BITS",
    "Accumulator",
    "WeightedDeltaSum",
    "apply_delta",
    "check_update_shapes",
    "l2_norm",
    "weighted_average",
]

_SCALE = float(2**FIXED_POINT_BITS)


def l2_norm(delta: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors of a delta together (float64)."""
    return math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in delta.values()))


def weighted_average(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> TensorDict:
    """Plain float64 weighted mean of tensors (the textbook formula, for tests and small jobs)."""
    if not states or len(states) != len(weights):
        raise ValueError("need as many weights as states, at least one")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    result = {}
    for name in states[0]:
        acc = np.zeros(np.shape(states[0][name]), dtype=np.float64)
        for state, weight in zip(states, weights):
            acc += np.asarray(state[name], dtype=np.float64) * weight
        result[name] = (acc / total).astype(states[0][name].dtype)
    return result


def apply_delta(global_state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> TensorDict:
    """``global + delta`` per tensor, keeping each tensor's dtype (integer buffers rounded)."""
    out = {}
    for name, base in global_state.items():
        step = np.asarray(delta[name], dtype=np.float64)
        if np.issubdtype(base.dtype, np.integer):
            out[name] = base + np.rint(step).astype(base.dtype)
        else:
            out[name] = (base.astype(np.float64) + step).astype(base.dtype)
    return out


def check_update_shapes(template: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> None:
    """Reject a delta whose names, shapes, dtypes or values do not fit the global model."""
    if set(template) != set(delta):
        missing = sorted(set(template) - set(delta))[:3]
        extra = sorted(set(delta) - set(template))[:3]
        raise ProtocolError("bad-shape", f"tensor names differ (missing {missing}, unexpected {extra})")
    for name, reference in template.items():
        array = delta[name]
        if array.shape != reference.shape:
            raise ProtocolError("bad-shape", f"{name}: {array.shape} != {reference.shape}")
        if array.dtype != reference.dtype:
            raise ProtocolError("bad-dtype", f"{name}: {array.dtype} != {reference.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ProtocolError("not-finite", f"{name} holds NaN or Inf")


def _check_weight(weight: int) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or weight < 1:
        raise ProtocolError("bad-weight", f"weight must be a positive integer, got {weight!r}")


class Accumulator(Protocol):
    """Where a round's accepted deltas are folded as they arrive: what every strategy's accumulator offers."""

    @property
    def total_weight(self) -> int: ...

    @property
    def count(self) -> int: ...

    def add(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None: ...

    def remove(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None: ...

    def mean(self) -> TensorDict: ...

    def add_noise(self, noise: Mapping[str, np.ndarray]) -> None: ...


class WeightedDeltaSum:
    """Running ``sum_i(n_i * delta_i)`` in exact fixed point; constant memory, order-independent."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._dtypes = {name: array.dtype for name, array in template.items()}
        self._sums = {name: np.zeros(array.shape, dtype=np.int64) for name, array in template.items()}
        self.total_weight = 0
        self.count = 0

    @staticmethod
    def fixed_point_terms(delta: Mapping[str, np.ndarray], weight: int) -> dict[str, np.ndarray]:
        """``rint(weight * delta * 2**24)`` per tensor as ``int64``: what :meth:`add` adds (a device computes the
        same before it masks them for secure aggregation)."""
        return fixed_point_terms(delta, weight)

    @classmethod
    def check_addable(cls, delta: Mapping[str, np.ndarray], weight: int) -> None:
        """ProtocolError unless ``weight`` is a positive integer and ``weight * delta`` lies within what the
        fixed-point sum can hold: what :meth:`add` would refuse, without adding."""
        _check_weight(weight)
        cls.fixed_point_terms(delta, int(weight))

    def add(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None:
        """Add ``weight * delta``; validates first, so a rejected update changes nothing.

        ``key`` (the device id) is not needed here: the sum does not depend on order."""
        _check_weight(weight)
        check_update_shapes({n: np.empty(s.shape, self._dtypes[n]) for n, s in self._sums.items()}, delta)
        terms = self.fixed_point_terms(delta, int(weight))
        for name, term in terms.items():
            self._sums[name] += term
        self.total_weight += int(weight)
        self.count += 1

    def remove(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None:
        """Take back what :meth:`add` added for the same ``delta`` and ``weight`` (exact: the sum is integer)."""
        del key
        terms = self.fixed_point_terms(delta, int(weight))
        for name, term in terms.items():
            self._sums[name] -= term
        self.total_weight -= int(weight)
        self.count -= 1

    def add_noise(self, noise: Mapping[str, np.ndarray]) -> None:
        """Add ``noise`` to the sum (DP at a trusted server): it counts for no weight and no update."""
        for name, term in fixed_point_terms(noise, 1).items():
            self._sums[name] += term

    def mean(self) -> TensorDict:
        """The weighted mean delta (zeros when nothing was added)."""
        if self.total_weight == 0:
            return {name: np.zeros(s.shape, dtype=self._dtypes[name]) for name, s in self._sums.items()}
        denominator = _SCALE * self.total_weight
        return {name: (s.astype(np.float64) / denominator) for name, s in self._sums.items()}  # type: ignore[misc]

    def state(self) -> tuple[dict[str, np.ndarray], int, int]:
        """What must be persisted to resume: the integer sums, total weight and count."""
        return self._sums, self.total_weight, self.count

    def restore(self, sums: Mapping[str, np.ndarray], total_weight: int, count: int) -> None:
        for name in self._sums:
            self._sums[name] = np.asarray(sums[name], dtype=np.int64).reshape(self._sums[name].shape).copy()
        self.total_weight = total_weight
        self.count = count

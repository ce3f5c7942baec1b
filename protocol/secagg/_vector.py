"""A weighted update as one vector of 64-bit words, and the sum of many back as the aggregator's sums.

The words are the update's fixed-point terms (``rint(weight * delta * 2**24)``,
the very integers the plain aggregation adds) for each tensor in name order,
then the weight, then the round's figures weighted the same way (training loss
and accuracy; the weight of those that measured the global model on their own
data, and that accuracy). The masked sum, unmasked, is bit for bit what the
plain aggregation would have summed, and the server learns the total weight
and the weighted means of the figures, without any single device's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .._errors import ProtocolError

__all__ = [
    "FIXED_POINT_BITS",
    "SummedUpdate",
    "fixed_point_terms",
    "summed_update",
    "update_words",
    "vector_length",
]

FIXED_POINT_BITS = 24
SCALE = float(2**FIXED_POINT_BITS)
MAX_TERM = float(2**47)  # per term; 2**16 terms still fit in int64
_FIGURE_WORDS = 4  # weighted loss, weighted accuracy, weight of the evaluated, their weighted accuracy


def fixed_point_terms(delta: Mapping[str, np.ndarray], weight: int) -> dict[str, np.ndarray]:
    """``rint(weight * delta * 2**24)`` per tensor as ``int64`` (``float32 * weight`` is exact in float64: the one
    rounding is per term, so a sum of terms does not depend on order). ProtocolError beyond what a sum holds."""
    terms = {}
    for name, array in delta.items():
        scaled = np.asarray(array, dtype=np.float64) * float(weight)
        if scaled.size and not float(np.abs(scaled).max()) < MAX_TERM / SCALE:  # (NaN is refused too)
            raise ProtocolError("too-large", f"{name}: weighted update beyond the aggregation range")
        terms[name] = np.rint(scaled * SCALE).astype(np.int64)
    return terms


def _figure(value: float, weight: int) -> int:
    scaled = float(value) * weight
    if not abs(scaled) < MAX_TERM / SCALE:
        raise ProtocolError("too-large", f"a figure of {value!r} beyond the aggregation range")
    return round(scaled * SCALE)


def vector_length(template: Mapping[str, np.ndarray]) -> int:
    return sum(int(np.prod(array.shape)) for array in template.values()) + 1 + _FIGURE_WORDS


def update_words(
    delta: Mapping[str, np.ndarray],
    weight: int,
    template: Mapping[str, np.ndarray],
    train_loss: float,
    train_accuracy: float,
    eval_accuracy: float | None,
) -> np.ndarray:
    """One device's weighted update and figures as ``uint64`` words (what it masks)."""
    if set(delta) != set(template):
        raise ProtocolError("bad-shape", "the update's tensors are not the model's")
    terms = fixed_point_terms(delta, weight)
    parts = []
    for name in sorted(template):
        if terms[name].shape != template[name].shape:
            raise ProtocolError("bad-shape", f"{name}: {terms[name].shape} != {template[name].shape}")
        parts.append(terms[name].reshape(-1))
    evaluated = 0 if eval_accuracy is None else weight
    figures = [weight, _figure(train_loss, weight), _figure(train_accuracy, weight), evaluated,
               0 if eval_accuracy is None else _figure(eval_accuracy, weight)]  # fmt: skip
    return np.concatenate([*parts, np.array(figures, dtype=np.int64)]).view(np.uint64)


@dataclass(frozen=True)
class SummedUpdate:
    """The unmasked sum of a round: per-tensor ``int64`` sums of the terms, the total weight, the weighted means."""

    sums: dict[str, np.ndarray]
    total_weight: int
    train_loss: float | None
    train_accuracy: float | None
    eval_accuracy: float | None


def summed_update(words: np.ndarray, template: Mapping[str, np.ndarray]) -> SummedUpdate:
    """The sums in an unmasked vector (two's complement: a sum that fits ``int64`` comes back exactly, whatever
    wrapped on the way)."""
    if words.shape != (vector_length(template),):
        raise ProtocolError("bad-shape", f"a summed vector of {words.shape} words, {vector_length(template)} expected")
    signed = words.view(np.int64)
    sums, offset = {}, 0
    for name in sorted(template):
        size = int(np.prod(template[name].shape))
        sums[name] = signed[offset : offset + size].reshape(template[name].shape).copy()
        offset += size
    weight, loss, accuracy, evaluated, eval_sum = (int(v) for v in signed[offset : offset + 1 + _FIGURE_WORDS])

    def mean(total: int, over: int) -> float | None:
        return total / SCALE / over if over > 0 else None

    return SummedUpdate(sums, weight, mean(loss, weight), mean(accuracy, weight), mean(eval_sum, evaluated))

"""A weighted update as one vector of 64-bit words, and the sum of many back as the aggregator's sums.

The words are the update's fixed-point terms (``rint(weight * delta * 2**24)``,
the very integers the plain aggregation adds) in the template's tensor order,
then the weight: the masked sum, unmasked, is bit for bit what the plain
aggregation would have summed, and the server learns the total weight without
any single device's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["from_words", "to_words", "vector_length"]


def vector_length(template: Mapping[str, np.ndarray]) -> int:
    return sum(int(np.prod(array.shape)) for array in template.values()) + 1


def to_words(terms: Mapping[str, np.ndarray], weight: int, template: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ``int64`` ``terms`` of each tensor of ``template`` (in its order) and ``weight``, as ``uint64`` words."""
    parts = [np.asarray(terms[name], dtype=np.int64).reshape(-1) for name in template]
    return np.concatenate([*parts, np.array([weight], dtype=np.int64)]).view(np.uint64)


def from_words(words: np.ndarray, template: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """The per-tensor ``int64`` sums and the total weight in a summed vector (two's complement: a sum that fits
    ``int64`` comes back exactly, whatever wrapped on the way)."""
    signed = words.view(np.int64)
    sums, offset = {}, 0
    for name, array in template.items():
        size = int(np.prod(array.shape))
        sums[name] = signed[offset : offset + size].reshape(array.shape).copy()
        offset += size
    return sums, int(signed[offset])

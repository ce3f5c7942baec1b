"""Secure aggregation: the server learns the sum of the devices' updates and nothing of any single one.

Pure arithmetic and state machines, no transport: :class:`SecAggDevice` is one
device's side of a round, :class:`SecAggAggregator` the server's. The round's
frames carry what they return.
"""

from ._aggregator import SecAggAggregator, SecAggFailed
from ._device import SecAggDevice
from ._params import SecAggParams, default_degree, default_threshold, round_context
from ._vector import FIXED_POINT_BITS, SummedUpdate, fixed_point_terms, summed_update, update_words, vector_length

__all__ = [
    "FIXED_POINT_BITS",
    "SecAggAggregator",
    "SecAggDevice",
    "SecAggFailed",
    "SecAggParams",
    "default_degree",
    "default_threshold",
    "round_context",
    "SummedUpdate",
    "fixed_point_terms",
    "summed_update",
    "update_words",
    "vector_length",
]

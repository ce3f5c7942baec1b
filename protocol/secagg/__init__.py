"""Secure aggregation: the server learns the sum of the devices' updates and nothing of any single one.

Pure arithmetic and state machines, no transport: :class:`SecAggDevice` is one
device's side of a round, :class:`SecAggAggregator` the server's. The round's
frames carry what they return.
"""

from ._aggregator import SecAggAggregator, SecAggFailed
from ._device import SecAggDevice
from ._params import SecAggParams, default_degree, default_threshold
from ._vector import from_words, to_words, vector_length

__all__ = [
    "SecAggAggregator",
    "SecAggDevice",
    "SecAggFailed",
    "SecAggParams",
    "default_degree",
    "default_threshold",
    "from_words",
    "to_words",
    "vector_length",
]

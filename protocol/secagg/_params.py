"""What every party of one secure-aggregation round agrees on: who takes part, the graph, the threshold.

The neighbour graph is SecAgg+'s sparse one (Bell et al. 2020): the participants
in sorted order on a ring, each joined to the ``degree / 2`` nearest on either
side (everyone to everyone when the ring is small: a neighbourhood must be large
for a third of it dropping at random to leave a majority, which makes the graph
sparse only from several hundred devices on). A device masks its input
with its neighbours only and shares its secrets with them only, so its work
grows with the degree, not with the fleet. ``threshold`` is how many of a
device's neighbours must answer to rebuild its secrets; it must be more than
half its neighbours, so that a server that asks some neighbours for one secret
and the others for the other can never hold both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from .._errors import ConfigError, ProtocolError

__all__ = ["SecAggParams", "default_degree", "default_threshold", "round_context"]

MAX_PARTICIPANTS = 10_000


DESIGN_DROPOUT = 1 / 3  # the share of a round's devices the defaults are made to lose
DESIGN_FAILURE = 1e-3  # the chance, at that dropout, that some device's secrets cannot be rebuilt


def _too_few_alive(degree: int, threshold: int, alive: float) -> float:
    """P(fewer than ``threshold`` of ``degree`` neighbours stay), each staying with probability ``alive``."""
    return sum(math.comb(degree, k) * alive**k * (1 - alive) ** (degree - k) for k in range(threshold))


def round_context(fleet: str, round_number: int, model_id: str) -> str:
    """What binds a round's keys and masks to it: the fleet, the round and the model it trains (both sides
    compute it from the task)."""
    return f"{fleet}|{round_number}|{model_id}"


def default_degree(participants: int) -> int:
    """The smallest even degree whose neighbourhoods, with the default threshold, survive a random third of the
    round dropping with probability ``1 - DESIGN_FAILURE`` (every other device when none does: below a few hundred
    devices the graph is complete; it grows like ``log n`` beyond)."""
    for degree in range(2, participants - 1, 2):
        if participants * _too_few_alive(degree, default_threshold(degree), 1 - DESIGN_DROPOUT) <= DESIGN_FAILURE:
            return degree
    return participants - 1


def default_threshold(degree: int) -> int:
    """A majority of the neighbours: the fewest that keep a server from holding both secrets of a device, and the
    most dropouts a round survives."""
    return degree // 2 + 1


@dataclass(frozen=True)
class SecAggParams:
    context: str  # the fleet and round: bound into every key and mask, so nothing carries over between rounds
    participants: tuple[str, ...]  # sorted, distinct
    degree: int
    threshold: int
    length: int  # words in each masked vector

    def __post_init__(self) -> None:
        n = len(self.participants)
        if list(self.participants) != sorted(set(self.participants)):
            raise ConfigError("secure aggregation: the participants must be sorted and distinct")
        if not 2 <= n <= MAX_PARTICIPANTS:
            raise ConfigError(f"secure aggregation needs 2..{MAX_PARTICIPANTS} participants, got {n}")
        if not 1 <= self.degree <= n - 1:
            raise ConfigError(f"secure aggregation: degree must be 1..{n - 1}, got {self.degree}")
        if self.degree < n - 1 and self.degree % 2:
            raise ConfigError(f"secure aggregation: a sparse graph has an even degree, got {self.degree}")
        if not self.degree // 2 + 1 <= self.threshold <= self.degree:
            raise ConfigError(
                f"secure aggregation: threshold must be more than half the degree ({self.degree // 2 + 1}.."
                f"{self.degree}), got {self.threshold}"
            )
        if not 1 <= self.length <= 2**31:
            raise ConfigError(f"secure aggregation: vector length {self.length} out of range")

    @classmethod
    def for_round(cls, context: str, participants: list[str], length: int, degree: int | None = None,
                  threshold: int | None = None) -> SecAggParams:  # fmt: skip
        ordered = tuple(sorted(participants))
        k = default_degree(len(ordered)) if degree is None else degree
        return cls(context, ordered, k, default_threshold(k) if threshold is None else threshold, length)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {device: i for i, device in enumerate(self.participants)}

    def point(self, device: str) -> int:
        """The x at which ``device`` holds its neighbours' shares (1-based: 0 is the secret)."""
        return self.index(device) + 1

    def index(self, device: str) -> int:
        try:
            return self._index[device]
        except KeyError:
            raise ProtocolError("not-a-participant", device) from None

    @cached_property
    def _neighbourhoods(self) -> dict[str, tuple[tuple[str, ...], frozenset[str]]]:
        return {}  # filled as asked: every party asks for the same few many times a round

    def neighbours(self, device: str) -> tuple[str, ...]:
        return self._neighbourhood(device)[0]

    def are_neighbours(self, a: str, b: str) -> bool:
        return b in self._neighbourhood(a)[1]

    def _neighbourhood(self, device: str) -> tuple[tuple[str, ...], frozenset[str]]:
        known = self._neighbourhoods.get(device)
        if known is not None:
            return known
        n, i = len(self.participants), self.index(device)
        if self.degree >= n - 1:
            around = [j for j in range(n) if j != i]
        else:
            half = self.degree // 2  # the same reach both ways: a is b's neighbour exactly when b is a's
            around = sorted(
                {(i + step) % n for step in range(1, half + 1)} | {(i - step) % n for step in range(1, half + 1)}
            )
        names = tuple(self.participants[j] for j in around)
        self._neighbourhoods[device] = known = (names, frozenset(names))
        return known

    def pair_context(self, purpose: str, a: str, b: str) -> bytes:
        first, second = sorted((a, b))
        return f"genfl-secagg-v1|{purpose}|{self.context}|{first}|{second}".encode()

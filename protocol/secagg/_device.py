"""A device's side of one secure-aggregation round (Bonawitz et al. 2017, with SecAgg+'s sparse graph).

1. ``advertise``: two fresh X25519 public keys, one to encrypt shares with, one to agree masks with.
2. ``share``: its self-mask seed ``b`` and its mask key are Shamir-shared among the neighbours the server heard
   from, each neighbour's pair of shares sealed with a key only the two of them can derive.
3. ``masked_input``: its vector plus the ChaCha20 expansion of ``b``, plus or minus (by the order of the two
   names) the expansion of the secret agreed with each neighbour that shared in turn, all modulo 2**64.
4. ``unmask``: for each neighbour, the share of ``b`` if the server says it sent its masked input, the share of
   its mask key if the server says it dropped before: never both of one neighbour, and nothing at all unless at
   least ``threshold`` participants sent masked inputs.

Every step runs once, in order: a device cannot be made to mask twice or to reveal twice.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._errors import ProtocolError
from ._masks import agree, expand, open_sealed, private_bytes, public_bytes, seal
from ._params import SecAggParams
from ._shamir import SHARE_BYTES, share_from_bytes, share_to_bytes, split

__all__ = ["SecAggDevice"]

ShareKind = Literal["seed", "key"]
_STEPS = ("advertise", "share", "receive", "mask", "unmask", "done")


class SecAggDevice:
    """One device in one round (``context``: the fleet, the round and its model). Its keys are made at once; who
    takes part, the graph and the threshold come with the roster (the devices that advertised in time)."""

    def __init__(self, device_id: str, context: str) -> None:
        self.device_id = device_id
        self.context = context
        self._params: SecAggParams | None = None
        self._cipher_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._seed = os.urandom(32)
        self._step = 0
        self._roster: dict[str, tuple[bytes, bytes]] = {}
        self._held: dict[str, tuple[int, int]] = {}  # neighbour -> (its b share, its mask-key share) at our point
        self._seal_keys: dict[str, bytes] = {}  # neighbour -> the key both seal with (made in share, used after)

    @property
    def params(self) -> SecAggParams:
        """The round's participants, graph and threshold (from the roster; ProtocolError before it came)."""
        if self._params is None:
            raise ProtocolError("secagg-order", f"{self.device_id}: no roster yet")
        return self._params

    def _advance(self, step: str) -> None:
        expected = _STEPS[self._step]
        if step != expected:
            raise ProtocolError("secagg-order", f"{self.device_id}: {step} asked for, {expected} due")
        self._step += 1

    def advertise(self) -> tuple[bytes, bytes]:
        self._advance("advertise")
        return public_bytes(self._cipher_key), public_bytes(self._mask_key)

    def share(self, params: SecAggParams, roster: Mapping[str, tuple[bytes, bytes]]) -> dict[str, bytes]:
        """The sealed share pair for each neighbour in ``roster`` (the neighbours the server heard advertise)."""
        self._advance("share")
        if params.context != self.context:
            raise ProtocolError("secagg-roster", f"a roster for {params.context!r}, this round is {self.context!r}")
        params.index(self.device_id)  # a participant, or ProtocolError
        self._params = params
        neighbours = set(self.params.neighbours(self.device_id))
        peers = sorted(peer for peer in roster if peer in neighbours)
        if len(peers) != len(roster):
            raise ProtocolError("secagg-roster", f"{self.device_id}: the roster names devices that are not neighbours")
        if len(peers) < self.params.threshold:
            raise ProtocolError("secagg-too-few", f"{len(peers)} neighbours advertised, {self.params.threshold} needed")
        self._roster = dict(roster)
        points = [self.params.point(peer) for peer in peers]
        seeds = split(self._seed, points, self.params.threshold)
        keys = split(private_bytes(self._mask_key), points, self.params.threshold)
        sealed = {}
        for peer, point in zip(peers, points):
            key = agree(self._cipher_key, roster[peer][0], self.params.pair_context("seal", self.device_id, peer))
            self._seal_keys[peer] = key  # the same both ways: what the peer sealed for us opens with it
            plaintext = share_to_bytes(seeds[point]) + share_to_bytes(keys[point])
            sealed[peer] = seal(key, plaintext, self._associated(self.device_id, peer))
        return sealed

    def _associated(self, sender: str, receiver: str) -> bytes:
        return f"{self.params.context}|{sender}>{receiver}".encode()

    def receive(self, sealed_from: Mapping[str, bytes]) -> None:
        """The share pairs neighbours sealed for us (forwarded by the server): who is in our masking set."""
        self._advance("receive")
        for sender, sealed in sealed_from.items():
            if sender not in self._roster:
                raise ProtocolError("secagg-roster", f"shares from {sender}, who did not advertise to us")
            plaintext = open_sealed(self._seal_keys[sender], sealed, self._associated(sender, self.device_id))
            if len(plaintext) != 2 * SHARE_BYTES:
                raise ProtocolError("bad-share", f"from {sender}: {len(plaintext)} bytes")
            self._held[sender] = (share_from_bytes(plaintext[:SHARE_BYTES]), share_from_bytes(plaintext[SHARE_BYTES:]))
        if len(self._held) < self.params.threshold:
            raise ProtocolError(
                "secagg-too-few", f"{len(self._held)} neighbours shared, {self.params.threshold} needed"
            )

    def masked_input(self, vector: np.ndarray) -> np.ndarray:
        """``vector`` (``uint64``, the params' length) masked: only the sum over many devices means anything."""
        self._advance("mask")
        if vector.dtype != np.uint64 or vector.shape != (self.params.length,):
            raise ValueError(f"a masked input is {self.params.length} uint64 words")
        masked = vector + expand(self._seed, self.params.length)
        for peer in sorted(self._held):
            context = self.params.pair_context("mask", self.device_id, peer)
            secret = agree(self._mask_key, self._roster[peer][1], context)
            mask = expand(secret, self.params.length)
            masked = masked + mask if self.device_id < peer else masked - mask  # uint64: modulo 2**64
        return masked

    def unmask(self, survivors: Collection[str], dropped: Collection[str]) -> dict[str, tuple[ShareKind, bytes]]:
        """For each neighbour whose shares we hold: ("seed", share) if it is among ``survivors`` (it sent its masked
        input), ("key", share) if among ``dropped``. ProtocolError, revealing nothing, if a name is in both, if we
        are not a survivor, or if fewer than ``threshold`` survived."""
        self._advance("unmask")
        alive, gone = set(survivors), set(dropped)
        if alive & gone:
            raise ProtocolError("secagg-both", f"{sorted(alive & gone)[:3]} named as sent and as dropped")
        if self.device_id not in alive:
            raise ProtocolError("secagg-order", f"{self.device_id} is told it did not send its masked input")
        if len(alive) < self.params.threshold:
            raise ProtocolError("secagg-too-few", f"{len(alive)} masked inputs, {self.params.threshold} needed")
        answer: dict[str, tuple[ShareKind, bytes]] = {}
        for peer, (seed_share, key_share) in self._held.items():
            if peer in alive:
                answer[peer] = ("seed", share_to_bytes(seed_share))
            elif peer in gone:
                answer[peer] = ("key", share_to_bytes(key_share))
        self._held.clear()
        return answer

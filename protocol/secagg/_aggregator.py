"""The server's side of one secure-aggregation round: it relays, sums masked vectors, and unmasks the sum only.

It never holds a single device's input: masked vectors are added to one running
sum as they arrive (constant memory), and what it rebuilds from the survivors'
shares are the self-mask seeds of those who sent a masked input and the mask
keys of those who dropped after sharing, never both for one device. The round
fails (``SecAggFailed``) without unmasking anything when fewer than
``threshold`` masked inputs came, or when any secret it needs has fewer than
``threshold`` shares: there is no partial result.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._errors import GenflError, ProtocolError
from ._masks import agree, expand
from ._params import SecAggParams
from ._shamir import combine, share_from_bytes

__all__ = ["SecAggAggregator", "SecAggFailed"]

_KEY_BYTES = 32


class SecAggFailed(GenflError):
    """A secure-aggregation round that cannot be unmasked: too few devices stayed; nothing was revealed."""


class SecAggAggregator:
    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.keys: dict[str, tuple[bytes, bytes]] = {}  # U1: who advertised (cipher key, mask key)
        self._sealed: dict[str, dict[str, bytes]] = {}  # receiver -> sender -> sealed share pair
        self.shared: set[str] = set()  # U2
        self.sent: set[str] = set()  # U3: whose masked input is in the sum
        self._sum = np.zeros(params.length, dtype=np.uint64)
        self._shares: dict[str, dict[str, dict[int, int]]] = {"seed": {}, "key": {}}  # kind -> owner -> x -> y
        self._answered: set[str] = set()
        self._closed_sharing = False
        self._closed_input = False

    # -- 1. advertise ----------------------------------------------------------------------------

    def add_keys(self, device: str, cipher_public: bytes, mask_public: bytes) -> None:
        self.params.index(device)
        if device in self.keys or self._sealed:
            raise ProtocolError("secagg-order", f"{device}: keys again, or after sharing began")
        if len(cipher_public) != _KEY_BYTES or len(mask_public) != _KEY_BYTES:
            raise ProtocolError("bad-key", f"{device}: X25519 public keys are {_KEY_BYTES} bytes")
        self.keys[device] = (cipher_public, mask_public)

    def roster(self, device: str) -> dict[str, tuple[bytes, bytes]]:
        """The advertised keys of ``device``'s neighbours: what it shares with."""
        return {peer: self.keys[peer] for peer in self.params.neighbours(device) if peer in self.keys}

    # -- 2. share --------------------------------------------------------------------------------

    def add_shares(self, device: str, sealed: Mapping[str, bytes]) -> None:
        if device not in self.keys or device in self.shared or self._closed_sharing:
            raise ProtocolError("secagg-order", f"{device}: shares out of turn")
        expected = set(self.roster(device))
        if set(sealed) != expected:
            raise ProtocolError("secagg-roster", f"{device}: shares for {len(sealed)} peers, {len(expected)} expected")
        for receiver, packet in sealed.items():
            self._sealed.setdefault(receiver, {})[device] = packet
        self.shared.add(device)

    def forwarded(self, device: str) -> dict[str, bytes]:
        """What ``device``'s neighbours sealed for it (call once sharing is over): who it masks against."""
        self._closed_sharing = True
        return {sender: packet for sender, packet in self._sealed.get(device, {}).items() if sender in self.shared}

    # -- 3. masked input -------------------------------------------------------------------------

    def add_masked(self, device: str, masked: np.ndarray) -> None:
        if device not in self.shared or device in self.sent or self._closed_input:
            raise ProtocolError("secagg-order", f"{device}: a masked input out of turn")
        if masked.dtype != np.uint64 or masked.shape != (self.params.length,):
            raise ProtocolError("bad-shape", f"{device}: a masked input is {self.params.length} uint64 words")
        self._sum += masked  # modulo 2**64
        self.sent.add(device)

    def unmask_request(self) -> tuple[list[str], list[str]]:
        """(who sent a masked input, who shared but did not): what every survivor is asked to answer for.
        SecAggFailed, asking nothing, with fewer than ``threshold`` masked inputs."""
        self._closed_input = True
        if len(self.sent) < self.params.threshold:
            raise SecAggFailed(f"{len(self.sent)} masked inputs, {self.params.threshold} needed: nothing is unmasked")
        return sorted(self.sent), sorted(self.shared - self.sent)

    # -- 4. unmask -------------------------------------------------------------------------------

    def add_unmask(self, device: str, answer: Mapping[str, tuple[str, bytes]]) -> None:
        if device not in self.sent or device in self._answered or not self._closed_input:
            raise ProtocolError("secagg-order", f"{device}: an unmasking answer out of turn")
        dropped = self.shared - self.sent
        point = self.params.point(device)
        for owner, (kind, share) in answer.items():
            wanted = "seed" if owner in self.sent else "key" if owner in dropped else None
            if kind != wanted or not self.params.are_neighbours(device, owner):
                raise ProtocolError("secagg-share", f"{device}: a {kind} share of {owner}, which was not asked for")
            self._shares[kind].setdefault(owner, {})[point] = share_from_bytes(share)
        self._answered.add(device)

    def _short(self) -> list[str]:
        """The devices whose secret (a survivor's seed, a dropped device's mask key) has fewer than ``threshold``
        shares so far."""
        t = self.params.threshold
        short = [u for u in sorted(self.sent) if len(self._shares["seed"].get(u, {})) < t]
        return short + [u for u in sorted(self.shared - self.sent) if len(self._shares["key"].get(u, {})) < t]

    @property
    def can_unmask(self) -> bool:
        """Whether every secret the sum needs has its ``threshold`` shares (more answers add nothing)."""
        return self._closed_input and not self._short()

    def result(self) -> np.ndarray:
        """The sum of the survivors' vectors (``uint64``). SecAggFailed, rebuilding nothing, if any secret it needs
        has fewer than ``threshold`` shares."""
        t = self.params.threshold
        dropped = sorted(self.shared - self.sent)
        short = self._short()
        if short:
            raise SecAggFailed(f"too few shares to unmask {len(short)} devices (e.g. {short[0]}): nothing is unmasked")
        total = self._sum.copy()
        for owner in sorted(self.sent):
            total -= expand(combine(self._shares["seed"][owner], t), self.params.length)
        for owner in dropped:
            mask_key = X25519PrivateKey.from_private_bytes(combine(self._shares["key"][owner], t))
            for peer in self.params.neighbours(owner):
                # the survivors that masked against the dropped device: those it shared with
                if peer in self.sent and owner in self.forwarded_to(peer):
                    secret = agree(mask_key, self.keys[peer][1], self.params.pair_context("mask", peer, owner))
                    mask = expand(secret, self.params.length)
                    total = total - mask if peer < owner else total + mask
        return total

    def forwarded_to(self, device: str) -> set[str]:
        return {sender for sender in self._sealed.get(device, {}) if sender in self.shared}

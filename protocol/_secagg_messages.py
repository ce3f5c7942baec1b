"""The frames of a secure-aggregation round (:mod:`protocol.secagg` computes what they carry).

Device -> server on the update topic; server -> device on the task topic; each
one typed, bounded and checked like every other frame (signed by the fleet's
guard), with the round and the device it is for or from:

    SecAggKeys      device -> server   its two X25519 public keys for the round
    SecAggRoster    server -> device   the round's participants, graph and threshold, its neighbours' keys
    SecAggShares    device -> server   its sealed share pairs, one per neighbour
    SecAggForward   server -> device   the share pairs its neighbours sealed for it
    MaskedUpdate    device -> server   its masked vector (uint64 words) and the model it started from
    UnmaskRequest   server -> device   who sent a masked input, who shared and dropped
    SecAggUnmask    device -> server   a share of each neighbour's seed (sent) or mask key (dropped)
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ._errors import ProtocolError
from ._fields import bad_field, check_device, check_int, check_sha256

__all__ = [
    "SECAGG_MESSAGES",
    "MaskedUpdate",
    "SecAggForward",
    "SecAggKeys",
    "SecAggRoster",
    "SecAggShares",
    "SecAggUnmask",
    "UnmaskRequest",
]

MAX_PARTICIPANTS = 10_000
MAX_NEIGHBOURS = 512
_KEY_BYTES = 32
_SEALED_BYTES = 12 + 2 * 66 + 16  # nonce, a seed share and a mask-key share, the tag
_SHARE_BYTES = 66


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(name: str, value: object, size: int) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * (size // 3 + 1):
        raise bad_field(f"{name} must be base64 of {size} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_field(f"{name} is not base64") from exc
    if len(data) != size:
        raise bad_field(f"{name} must be {size} bytes, got {len(data)}")
    return data


def _names(name: str, value: object, limit: int) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise bad_field(f"{name} must be a list of at most {limit} device ids")
    names = tuple(check_device(item) for item in value)
    if len(set(names)) != len(names):
        raise bad_field(f"{name} names a device twice")
    return names


def _peer_map(name: str, value: object, size: int) -> dict[str, bytes]:
    if not isinstance(value, dict) or len(value) > MAX_NEIGHBOURS:
        raise bad_field(f"{name} must map at most {MAX_NEIGHBOURS} device ids to bytes")
    return {check_device(peer): _unb64(f"{name}[{str(peer)[:64]}]", data, size) for peer, data in value.items()}


@dataclass(frozen=True)
class _SecAggMessage:
    round: int
    device_id: str

    def __post_init__(self) -> None:
        check_int("round", self.round, 1)
        check_device(self.device_id)

    def _base(self) -> dict[str, Any]:
        return {"round": self.round, "device_id": self.device_id}


@dataclass(frozen=True)
class SecAggKeys(_SecAggMessage):
    TYPE: ClassVar[str] = "secagg-keys"
    cipher_key: bytes
    mask_key: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("cipher_key", "mask_key"):
            if not isinstance(getattr(self, name), bytes) or len(getattr(self, name)) != _KEY_BYTES:
                raise bad_field(f"{name} must be {_KEY_BYTES} bytes")

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        return {**self._base(), "cipher_key": _b64(self.cipher_key), "mask_key": _b64(self.mask_key)}, b""

    @classmethod
    def from_wire(cls, header: dict[str, Any], body: bytes) -> SecAggKeys:
        _no_body(cls, body)
        return cls(header.get("round"), header.get("device_id"),  # type: ignore[arg-type]
                   _unb64("cipher_key", header.get("cipher_key"), _KEY_BYTES),
                   _unb64("mask_key", header.get("mask_key"), _KEY_BYTES))  # fmt: skip


@dataclass(frozen=True)
class SecAggRoster(_SecAggMessage):
    TYPE: ClassVar[str] = "secagg-roster"
    participants: tuple[str, ...]
    degree: int
    threshold: int
    length: int
    keys: dict[str, tuple[bytes, bytes]] = field(compare=False)  # neighbour -> (cipher key, mask key)

    def __post_init__(self) -> None:
        super().__post_init__()
        _names("participants", self.participants, MAX_PARTICIPANTS)
        check_int("degree", self.degree, 1, MAX_NEIGHBOURS)
        check_int("threshold", self.threshold, 1, MAX_NEIGHBOURS)
        check_int("length", self.length, 1, 2**31)
        if len(self.keys) > MAX_NEIGHBOURS:
            raise bad_field("too many neighbours' keys")

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        header = {**self._base(), "degree": self.degree, "threshold": self.threshold, "length": self.length,
                  "participants": list(self.participants),
                  "keys": {peer: [_b64(c), _b64(m)] for peer, (c, m) in self.keys.items()}}  # fmt: skip
        return header, b""

    @classmethod
    def from_wire(cls, header: dict[str, Any], body: bytes) -> SecAggRoster:
        _no_body(cls, body)
        raw = header.get("keys")
        if not isinstance(raw, dict) or len(raw) > MAX_NEIGHBOURS:
            raise bad_field(f"keys must map at most {MAX_NEIGHBOURS} device ids to key pairs")
        keys = {}
        for peer, pair in raw.items():
            if not isinstance(pair, list) or len(pair) != 2:
                raise bad_field("a neighbour's keys are a pair")
            keys[check_device(peer)] = (_unb64("keys[]", pair[0], _KEY_BYTES), _unb64("keys[]", pair[1], _KEY_BYTES))
        return cls(header.get("round"), header.get("device_id"),  # type: ignore[arg-type]
                   _names("participants", header.get("participants"), MAX_PARTICIPANTS),
                   header.get("degree"), header.get("threshold"), header.get("length"), keys)  # type: ignore[arg-type]  # fmt: skip


@dataclass(frozen=True)
class SecAggShares(_SecAggMessage):
    """Device -> server: the sealed share pair for each neighbour (to forward); or, from the server (as
    ``SecAggForward``), the ones its neighbours sealed for it."""

    TYPE: ClassVar[str] = "secagg-shares"
    sealed: dict[str, bytes] = field(compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.sealed) > MAX_NEIGHBOURS or not all(len(v) == _SEALED_BYTES for v in self.sealed.values()):
            raise bad_field(f"at most {MAX_NEIGHBOURS} sealed share pairs of {_SEALED_BYTES} bytes")

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        return {**self._base(), "sealed": {peer: _b64(data) for peer, data in self.sealed.items()}}, b""

    @classmethod
    def from_wire(cls, header: dict[str, Any], body: bytes) -> SecAggShares:
        _no_body(cls, body)
        return cls(header.get("round"), header.get("device_id"),  # type: ignore[arg-type]
                   _peer_map("sealed", header.get("sealed"), _SEALED_BYTES))  # fmt: skip


@dataclass(frozen=True)
class SecAggForward(SecAggShares):
    TYPE: ClassVar[str] = "secagg-forward"


@dataclass(frozen=True)
class MaskedUpdate(_SecAggMessage):
    """Device -> server: its update as masked ``uint64`` words (little-endian), and the model it trained from."""

    TYPE: ClassVar[str] = "masked-update"
    base_model_id: str
    words: bytes = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sha256("base_model_id", self.base_model_id)
        if not isinstance(self.words, bytes) or not self.words or len(self.words) % 8:
            raise bad_field("words must be a whole number of 8-byte words")

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        return {**self._base(), "base_model_id": self.base_model_id}, self.words

    @classmethod
    def from_wire(cls, header: dict[str, Any], body: bytes) -> MaskedUpdate:
        return cls(header.get("round"), header.get("device_id"), header.get("base_model_id"), body)  # type: ignore[arg-type]


@dataclass(frozen=True)
class UnmaskRequest(_SecAggMessage):
    TYPE: ClassVar[str] = "secagg-unmask-request"
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _names("survivors", self.survivors, MAX_PARTICIPANTS)
        _names("dropped", self.dropped, MAX_PARTICIPANTS)

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        return {**self._base(), "survivors": list(self.survivors), "dropped": list(self.dropped)}, b""

    @classmethod
    def from_wire(cls, header: dict[str, Any], body: bytes) -> UnmaskRequest:
        _no_body(cls, body)
        return cls(header.get("round"), header.get("device_id"),  # type: ignore[arg-type]
                   _names("survivors", header.get("survivors"), MAX_PARTICIPANTS),
                   _names("dropped", header.get("dropped"), MAX_PARTICIPANTS))  # fmt: skip


ShareKind = Literal["seed", "key"]


@dataclass(frozen=True)
class SecAggUnmask(_SecAggMessage):
    TYPE: ClassVar[str] = "secagg-unmask"
    shares: dict[str, tuple[ShareKind, bytes]] = field(compare=False)  # neighbour -> (what of it, the share)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.shares) > MAX_NEIGHBOURS:
            raise bad_field("too many shares")
        for kind, share in self.shares.values():
            if kind not in ("seed", "key") or len(share) != _SHARE_BYTES:
                raise bad_field(f"a share is a seed or key share of {_SHARE_BYTES} bytes")

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        shares = {peer: [kind, _b64(share)] for peer, (kind, share) in self.shares.items()}
        return {**self._base(), "shares": shares}, b""

    @classmethod
    def from_wire(cls, header: dict[str, Any], body: bytes) -> SecAggUnmask:
        _no_body(cls, body)
        raw = header.get("shares")
        if not isinstance(raw, dict) or len(raw) > MAX_NEIGHBOURS:
            raise bad_field(f"shares must map at most {MAX_NEIGHBOURS} device ids to shares")
        shares: dict[str, tuple[ShareKind, bytes]] = {}
        for peer, entry in raw.items():
            if not isinstance(entry, list) or len(entry) != 2 or entry[0] not in ("seed", "key"):
                raise bad_field("a share is [seed|key, base64]")
            shares[check_device(peer)] = (entry[0], _unb64("shares[]", entry[1], _SHARE_BYTES))
        return cls(header.get("round"), header.get("device_id"), shares)  # type: ignore[arg-type]


def _no_body(cls: type, body: bytes) -> None:
    if body:
        raise ProtocolError("bad-frame", f"message {cls.TYPE!r} carries no body")  # type: ignore[attr-defined]


SECAGG_MESSAGES: tuple[type[Any], ...] = (SecAggKeys, SecAggRoster, SecAggShares, SecAggForward, MaskedUpdate,
                                          UnmaskRequest, SecAggUnmask)  # fmt: skip

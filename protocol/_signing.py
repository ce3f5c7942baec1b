"""Ed25519 signatures on frames: the server signs what it sends, each device what it sends.

A signed frame is ``b"GFS" + version byte + 64-byte signature + frame``. The
signature covers a domain tag, the fleet name and the whole inner frame, so a
frame signed for one fleet does not verify in another, and every field of the
message (device id, round, the update's tensors) is covered. Blob chunks are
signed like everything else: in a signed fleet every frame on the wire is.

:class:`FrameGuard` is the seam the coordinator and the agent use: ``seal``
what goes out, ``open`` what comes in (which raises
:class:`~protocol.ProtocolError` with reason ``unsigned``, ``bad-signature``,
``unknown-device`` or ``revoked``). :class:`OpenGuard` passes frames through
for fleets that do not sign (the demo on an anonymous broker).
"""

from __future__ import annotations

import base64
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import ConfigError, ProtocolError

if TYPE_CHECKING:  # cryptography is imported when a key is first used: an open fleet's daemon stays ~17 MB smaller
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "FrameGuard",
    "OpenGuard",
    "SignedGuard",
    "generate_signing_key",
    "load_signing_key",
    "public_key_from_text",
    "public_key_text",
    "save_signing_key",
    "sign_frame",
    "verify_frame",
    "write_secret",
]

_MAGIC = b"GFS"
_VERSION = 1
_PREFIX = struct.Struct(">3sB")
_SIGNATURE_BYTES = 64
_DOMAIN = b"genfl-edge frame v1\x00"


def _signed_bytes(fleet: str, frame: bytes) -> bytes:
    return _DOMAIN + fleet.encode() + b"\x00" + frame


def sign_frame(fleet: str, frame: bytes, key: Ed25519PrivateKey) -> bytes:
    return _PREFIX.pack(_MAGIC, _VERSION) + key.sign(_signed_bytes(fleet, frame)) + frame


def verify_frame(fleet: str, payload: bytes, key: Ed25519PublicKey) -> bytes:
    """The inner frame of a signed ``payload``, or ``ProtocolError`` (``unsigned``, ``bad-signature``)."""
    head = _PREFIX.size + _SIGNATURE_BYTES
    if len(payload) < head or payload[:3] != _MAGIC:
        raise ProtocolError("unsigned", "a signed fleet accepts only signed frames")
    if payload[3] != _VERSION:
        raise ProtocolError("bad-signature", f"signature version {payload[3]}")
    from cryptography.exceptions import InvalidSignature

    signature, frame = payload[_PREFIX.size : head], payload[head:]
    try:
        key.verify(signature, _signed_bytes(fleet, frame))
    except InvalidSignature:
        raise ProtocolError("bad-signature", "the signature does not verify") from None
    return frame


# -- keys ----------------------------------------------------------------------------------------


def generate_signing_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600 from the first byte), atomically."""
    from ._blobs import atomic_write  # mkstemp creates it 0600 already; the mode is set again to be explicit

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=0o600)


def save_signing_key(path: Path, key: Ed25519PrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret(path, pem)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the signing key ({type(exc).__name__})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64 (what enrollment exchanges and configs pin)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_text(text: object) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(text, str):
        raise ConfigError("a public key must be base64 text")
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError("not a base64 Ed25519 public key (32 bytes)") from exc


# -- the seam ------------------------------------------------------------------------------------


class FrameGuard(ABC):
    @property
    @abstractmethod
    def signs(self) -> bool: ...

    @abstractmethod
    def seal(self, frame: bytes) -> bytes:
        """What goes on the wire for ``frame``."""

    @abstractmethod
    def open(self, sender: str, payload: bytes) -> bytes:
        """The frame inside ``payload`` from ``sender`` (a device id, or ``server``), or ProtocolError."""


class OpenGuard(FrameGuard):
    """No signatures (a fleet on an anonymous broker, the demo)."""

    @property
    def signs(self) -> bool:
        return False

    def seal(self, frame: bytes) -> bytes:
        return frame

    def open(self, sender: str, payload: bytes) -> bytes:
        return payload


class SignedGuard(FrameGuard):
    """Sign with our key; verify with the key ``peer_key`` gives for a sender (it raises for unknown ones)."""

    def __init__(self, fleet: str, own_key: Ed25519PrivateKey, peer_key: Callable[[str], Ed25519PublicKey]) -> None:
        self.fleet = fleet
        self._own_key = own_key
        self._peer_key = peer_key

    @property
    def signs(self) -> bool:
        return True

    def seal(self, frame: bytes) -> bytes:
        return sign_frame(self.fleet, frame, self._own_key)

    def open(self, sender: str, payload: bytes) -> bytes:
        return verify_frame(self.fleet, payload, self._peer_key(sender))

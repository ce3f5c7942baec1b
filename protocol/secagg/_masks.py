"""Masks and the keys they come from: X25519 agreement, HKDF, a ChaCha20 keystream as the PRG.

Every vector lives in the integers modulo 2**64 (numpy ``uint64`` wraps): the
fixed-point terms of a device's weighted update, viewed as unsigned. A mask is
the ChaCha20 keystream of a 32-byte seed read as ``uint64`` words: a standard
PRG, so the same seed gives the same mask on every machine.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .._errors import ProtocolError

__all__ = ["agree", "expand", "open_sealed", "private_bytes", "public_bytes", "seal"]

_ZERO_NONCE = bytes(16)  # each seed expands to one mask only: the nonce never needs to vary


def expand(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random ``uint64`` words from a 32-byte ``seed``."""
    if len(seed) != 32:
        raise ValueError("a mask seed is 32 bytes")
    encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * length)), dtype="<u8").astype(np.uint64)


def agree(private: X25519PrivateKey, peer_public: bytes, context: bytes) -> bytes:
    """A 32-byte secret both ends of a pair derive (X25519 then HKDF-SHA256 over ``context``)."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
        shared = private.exchange(peer)
    except ValueError as exc:  # a malformed key, or one of small order (an all-zero result)
        raise ProtocolError("bad-key", f"cannot agree a key with that peer: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(shared)


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(private: X25519PrivateKey) -> bytes:
    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 with a random nonce (prepended): the shares one device sends another through the server."""
    import os

    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag

    if len(sealed) < 12 + 16:
        raise ProtocolError("bad-ciphertext", "too short")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], associated)
    except InvalidTag as exc:
        raise ProtocolError("bad-ciphertext", "does not open with the pair's key (forged or misrouted)") from exc

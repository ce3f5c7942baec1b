"""Shamir's secret sharing of 32-byte secrets over the prime field of 2**521 - 1.

A secret is the constant term of a random polynomial of degree ``threshold - 1``;
share ``x`` is the polynomial at ``x`` (1, 2, ...). Any ``threshold`` shares give
the secret back by Lagrange interpolation at 0; fewer say nothing about it (every
secret is equally likely given them). The field is larger than any 32-byte
secret, so a secret is one field element.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from .._errors import ProtocolError

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

PRIME = 2**521 - 1  # a Mersenne prime
SHARE_BYTES = 66  # a field element, big-endian
SECRET_BYTES = 32


def split(secret: bytes, xs: Iterable[int], threshold: int) -> dict[int, int]:
    """Share ``secret`` (32 bytes) at each ``x`` of ``xs`` (distinct, 1..PRIME-1): any ``threshold`` rebuild it."""
    points = list(xs)
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} must be 1..{len(points)} (the number of shares)")
    if len(set(points)) != len(points) or not all(0 < x < PRIME for x in points):
        raise ValueError("share points must be distinct and in 1..PRIME-1")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in points}


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):  # Horner
        value = (value * x + coefficient) % PRIME
    return value


def combine(shares: Mapping[int, int], threshold: int) -> bytes:
    """The secret behind ``shares`` (at least ``threshold`` of them; exactly ``threshold`` are used). ProtocolError
    when there are too few, or the result is not a 32-byte secret (shares of different secrets, or forged)."""
    if len(shares) < threshold:
        raise ProtocolError("too-few-shares", f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for i, (x_i, y_i) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(points):
            if i != j:
                numerator = numerator * (-x_j) % PRIME
                denominator = denominator * (x_i - x_j) % PRIME
        secret = (secret + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ProtocolError("bad-shares", "the shares do not rebuild a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ProtocolError("bad-share", f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ProtocolError("bad-share", "a share outside the field")
    return value

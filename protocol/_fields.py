"""The checks every frame's fields pass: each failure a ``ProtocolError("bad-field", ...)``."""

from __future__ import annotations

import math

from ._errors import GenflError, ProtocolError
from ._topics import validate_name

__all__ = ["HEX_DIGITS", "bad_field", "check_device", "check_float", "check_int", "check_sha256"]

HEX_DIGITS = frozenset("0123456789abcdef")


def bad_field(detail: str) -> ProtocolError:
    return ProtocolError("bad-field", detail)


def check_int(name: str, value: object, low: int = 0, high: int = 2**53) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_field(f"{name} must be an integer in [{low}, {high}], got {value!r}"[:300])
    return value


def check_float(name: str, value: object, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_field(f"{name} must be a number, got {value!r}"[:300])
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise bad_field(f"{name} must be finite in [{low}, {high}], got {value!r}"[:300])
    return number


def check_sha256(name: str, value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= HEX_DIGITS:
        raise bad_field(f"{name} must be a lowercase hex sha256")
    return value


def check_device(value: object) -> str:
    try:
        return validate_name("device id", value)  # type: ignore[arg-type]
    except GenflError as exc:
        raise bad_field(str(exc)) from exc

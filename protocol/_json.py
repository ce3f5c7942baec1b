"""JSON from the network, parsed so that every malformed input is a :class:`ProtocolError`.

``json.loads`` alone lets hostile input escape as other exceptions: an integer
of more than 4,300 digits raises a plain ``ValueError`` (CPython's limit on
int-from-string conversion), an integer too large for a float raises
``OverflowError`` wherever it is later turned into one, ``NaN`` and
``Infinity`` are accepted, and deep nesting raises ``RecursionError``.
:func:`loads_bounded` bounds integers and floats while parsing and turns
every failure into the project's own rejection error.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ._errors import ProtocolError

__all__ = ["MAX_INT_DIGITS", "loads_bounded"]

MAX_INT_DIGITS = 24  # 2**64 has 20 digits; nothing in the protocol needs more


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ProtocolError("bad-frame", f"an integer of {len(text)} characters")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 64:
        raise ProtocolError("bad-frame", f"a number of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError("bad-frame", f"a number out of range ({text[:20]})")
    return value


def _parse_constant(name: str) -> float:
    raise ProtocolError("bad-frame", f"{name} is not allowed")


def loads_bounded(data: bytes | str, what: str = "message") -> Any:
    """Parse JSON; integers of at most ``MAX_INT_DIGITS`` digits, finite floats only.

    Raises :class:`ProtocolError` (reason ``bad-frame``) for anything else, whatever the cause.
    """
    try:
        return json.loads(data, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except ProtocolError as exc:
        raise ProtocolError("bad-frame", f"{what} rejected: {exc.detail}") from None
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError("bad-frame", f"{what} is not JSON ({type(exc).__name__}: {str(exc)[:120]})") from None

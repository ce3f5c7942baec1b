"""Frames written by hand, as a hostile client can send them (the decoders must refuse each cleanly)."""

from __future__ import annotations

import json

__all__ = ["raw_frame"]


def raw_frame(header: bytes | str | dict[str, object], body: bytes = b"") -> bytes:
    """The wire frame: magic, version 2, the header's length (4 bytes, big-endian), the header, the body; the
    header as given (bytes), encoded (text) or written as JSON (a dict), checked by nothing."""
    if isinstance(header, dict):
        header = json.dumps(header)
    data = header.encode() if isinstance(header, str) else header
    return b"GFL\x02" + len(data).to_bytes(4, "big") + data + body

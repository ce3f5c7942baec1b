"""Boards' failure reasons, as the server counts them."""

from __future__ import annotations

__all__ = ["failure_summary"]


def failure_summary(reason: str, device_id: str) -> str:
    """A board's failure reason as one short line without the board's name, for counting by reason."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "no reason given"  # a traceback's last line says what went wrong
    return line.replace(device_id, "<device>")[:160]

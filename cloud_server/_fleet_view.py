"""The fleet as its operator reads it: devices and rounds, read-only from the state dir's SQLite files.

``genfl-server devices list`` and the dashboard show the same rows. Each call
opens its own read-only connections, so a reader in another thread or process
never blocks (or is blocked by) the serving coordinator.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["fleet_rows", "read_rows", "round_rows"]


def read_rows(path: Path, sql: str) -> list[tuple[Any, ...]] | None:
    """The rows of ``sql``, or None when the file or its table is not there (yet)."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return list(db.execute(sql))
    except sqlite3.Error:
        return None
    finally:
        db.close()


def fleet_rows(state_dir: Path) -> list[dict[str, Any]]:
    """One row per device: enrolled devices of a secured fleet, or every device seen of an open one."""
    activity = {
        str(d): {"online": bool(o), "last_seen": s, "rounds": r, "last_norm": n, "last_accuracy": a}
        for d, o, s, r, n, a in read_rows(
            state_dir / "state.sqlite3",
            "SELECT device_id, online, last_seen, rounds, last_norm, last_accuracy FROM devices",
        )
        or []
    }
    enrolled = read_rows(
        state_dir / "security" / "registry.sqlite3",
        "SELECT device_id, enrolled, revoked FROM devices ORDER BY device_id",
    )
    entries: list[tuple[str, float | None, float | None]]
    if enrolled is None:  # an open fleet: no registry, the devices are those that spoke
        entries = [(device_id, None, None) for device_id in sorted(activity)]
    else:
        entries = [(str(d), float(e), None if r is None else float(r)) for d, e, r in enrolled]
    rows = []
    for device_id, enrolled_at, revoked in entries:
        seen = activity.get(device_id, {})
        rows.append(
            {
                "device_id": device_id,
                "online": bool(seen.get("online")) and revoked is None,
                "last_seen": seen.get("last_seen"),
                "rounds": seen.get("rounds", 0),
                "last_update_norm": seen.get("last_norm"),
                "last_update_accuracy": seen.get("last_accuracy"),
                "enrolled": enrolled_at,
                "revoked": revoked is not None,
            }
        )
    return rows


def round_rows(state_dir: Path) -> list[dict[str, Any]]:
    """Every round of the journal, oldest first: when, how many updates, and the accuracy when evaluated."""
    rows = read_rows(
        state_dir / "state.sqlite3",
        "SELECT round, started, closed, accepted, failed, timed_out, accuracy, train_loss FROM rounds ORDER BY round",
    )
    return [
        {
            "round": n,
            "started": s,
            "closed": c,
            "accepted": a,
            "failed": f,
            "timed_out": bool(t) if t is not None else None,
            "accuracy": acc,
            "train_loss": loss,
        }
        for n, s, c, a, f, t, acc, loss in rows or []
    ]

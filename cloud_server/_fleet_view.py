"""The fleet as its operator reads it: devices and rounds, read-only from the state dir's SQLite files.

``genfl-server devices list`` and the dashboard show the same rows. Each call
opens its own read-only connections, so a reader in another thread or process
never blocks (or is blocked by) the serving coordinator.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ._failures import failure_summary

__all__ = ["fleet_classes", "fleet_rows", "held_names", "read_rows", "report_of", "round_rows"]


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


def fleet_classes(state_dir: Path) -> tuple[str, ...] | None:
    """The fleet's class list the state was started with (None before the first start)."""
    from ._journal import read_classes

    rows = read_rows(state_dir / "state.sqlite3", "SELECT value FROM meta WHERE key = 'classes'")
    return read_classes(str(rows[0][0])) if rows else None


def held_names(label_counts: str | None, classes: tuple[str, ...] | None) -> list[str] | None:
    """The names of the classes a device reported samples of (None when it shares no counts)."""
    if label_counts is None or classes is None:
        return None
    try:
        counts = json.loads(label_counts)
    except (ValueError, RecursionError):
        return None
    if not isinstance(counts, list) or len(counts) != len(classes):
        return None
    return [name for name, count in zip(classes, counts) if isinstance(count, (int, float)) and count >= 0.5]


def fleet_rows(state_dir: Path) -> list[dict[str, Any]]:
    """One row per device: enrolled devices of a secured fleet, or every device seen of an open one."""
    classes = fleet_classes(state_dir)
    activity = {
        str(d): {
            "online": bool(o),
            "last_seen": s,
            "rounds": r,
            "last_norm": n,
            "last_accuracy": a,
            "classes_held": held_names(c, classes),
        }
        for d, o, s, r, n, a, c in read_rows(
            state_dir / "state.sqlite3",
            "SELECT device_id, online, last_seen, rounds, last_norm, last_accuracy, label_counts FROM devices",
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
                "classes_held": seen.get("classes_held"),
                "enrolled": enrolled_at,
                "revoked": revoked is not None,
            }
        )
    return rows


def round_rows(state_dir: Path) -> list[dict[str, Any]]:
    """Every round of the journal, oldest first: when, how many updates, and the accuracy when evaluated."""
    database = state_dir / "state.sqlite3"
    rows = read_rows(
        database,
        "SELECT round, started, closed, accepted, failed, timed_out, accuracy, train_loss, report, configs FROM rounds"
        " ORDER BY round",
    )
    answered: dict[int, set[str]] = {}
    for number, device_id in read_rows(database, "SELECT round, device_id FROM updates") or []:
        answered.setdefault(int(number), set()).add(str(device_id))
    failures: dict[int, dict[str, str]] = {}
    for number, device_id, reason in read_rows(database, "SELECT round, device_id, reason FROM failures") or []:
        failures.setdefault(int(number), {})[str(device_id)] = str(reason)
    result = []
    for n, s, c, a, f, t, acc, loss, report, configs in rows or []:
        picked = sorted(_picked(configs))
        failed = failures.get(int(n), {})
        result.append({
            "round": n,
            "started": s,
            "closed": c,
            "accepted": a,
            "failed": f,
            "timed_out": bool(t) if t is not None else None,
            "accuracy": acc,
            "train_loss": loss,
            "report": report_of(report),
            "picked": picked,
            # the open round: whom it waits for; a closed one that timed out: whom it left out
            "waiting": [d for d in picked if d not in answered.get(int(n), set()) and d not in failed],
            "failures": {d: failure_summary(r, d) for d, r in sorted(failed.items())},
        })  # fmt: skip
    return result


def _picked(configs: str | None) -> list[str]:
    try:
        value = json.loads(configs or "{}")
    except (ValueError, RecursionError):
        return []
    return [str(d) for d in value] if isinstance(value, dict) else []


def report_of(text: str | None) -> dict[str, Any] | None:
    """A round's report as the journal keeps it (None when absent or unreadable)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None

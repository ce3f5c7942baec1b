"""The fleet as its operator reads it: devices and rounds, read-only from the state dir's SQLite files.

``genfl-server devices list`` and the dashboard show the same rows. Each call
opens its own read-only connections, so a reader in another thread or process
never blocks (or is blocked by) the serving coordinator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..rounds._failures import failure_summary
from ..rounds._journal_reader import JournalReader, report_of

__all__ = ["fleet_classes", "fleet_rows", "held_names", "report_of", "round_rows"]


def fleet_classes(state_dir: Path) -> tuple[str, ...] | None:
    """The fleet's class list the state was started with (None before the first start)."""
    return JournalReader(state_dir).classes()


def _enrollments(state_dir: Path) -> list[tuple[str, float, float | None]] | None:
    """(device, enrolled, revoked) from a secured fleet's registry; None for an open fleet."""
    from ..fleet._registry import read_enrollments

    return read_enrollments(state_dir / "security" / "registry.sqlite3")


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
        row.device_id: {
            "online": row.online,
            "last_seen": row.last_seen,
            "rounds": row.rounds,
            "last_norm": row.last_norm,
            "last_accuracy": row.last_accuracy,
            "classes_held": held_names(row.label_counts, classes),
            "release": row.release,
            "release_score": row.release_score,
        }
        for row in JournalReader(state_dir).devices()
    }
    enrolled = _enrollments(state_dir)
    entries: list[tuple[str, float | None, float | None]]
    if enrolled is None:  # an open fleet: no registry, the devices are those that spoke
        entries = [(device_id, None, None) for device_id in sorted(activity)]
    else:
        entries = list(enrolled)
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
                "release": seen.get("release"),
                "release_score": seen.get("release_score"),
                "enrolled": enrolled_at,
                "revoked": revoked is not None,
            }
        )
    return rows


def round_rows(state_dir: Path) -> list[dict[str, Any]]:
    """Every round of the journal, oldest first: when, how many updates, and the accuracy when evaluated."""
    journal = JournalReader(state_dir)
    answered: dict[int, set[str]] = {}
    for update in journal.updates():
        answered.setdefault(update.round, set()).add(update.device_id)
    failures: dict[int, dict[str, str]] = {}
    for failure in journal.failures():
        failures.setdefault(failure.round, {})[failure.device_id] = failure.reason
    result = []
    for row in journal.rounds():
        picked = sorted(row.picked)
        failed = failures.get(row.round, {})
        result.append({
            "round": row.round,
            "started": row.started,
            "closed": row.closed,
            "accepted": row.accepted,
            "failed": row.failed,
            "timed_out": row.timed_out,
            "accuracy": row.accuracy,
            "train_loss": row.train_loss,
            "report": row.report,
            "picked": picked,
            # the open round: whom it waits for; a closed one that timed out: whom it left out
            "waiting": [d for d in picked if d not in answered.get(row.round, set()) and d not in failed],
            "failures": {d: failure_summary(r, d) for d, r in sorted(failed.items())},
        })  # fmt: skip
    return result

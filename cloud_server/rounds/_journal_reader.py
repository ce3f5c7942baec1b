"""The journal as its readers see it: rounds, updates, failures, rejections and devices, read-only.

The metrics' seed, the fleet view (``devices list``, the dashboard), the benchmarks and the tests read a state
through this, never through SQL of their own: the schema is the journal's to change. Every call opens its own
read-only connection, so a reader in another thread or process never blocks (or is blocked by) the serving
coordinator; a state with no journal yet (or one being created) reads as empty.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DeviceRow", "FailureRow", "JournalReader", "RoundRow", "UpdateRow"]


@dataclass(frozen=True)
class RoundRow:
    round: int
    started: float
    closed: float | None  # None: the round is open
    accepted: int
    failed: int
    total_weight: int
    timed_out: bool | None
    accuracy: float | None
    loss: float | None
    train_loss: float | None
    report: dict[str, Any] | None  # what the strategy did beyond training (None: nothing, or unreadable)
    picked: tuple[str, ...]  # the devices the round sent tasks to
    bytes_up: int | None
    bytes_down: int | None

    @property
    def seconds(self) -> float | None:
        return None if self.closed is None or self.closed < self.started else self.closed - self.started


@dataclass(frozen=True)
class UpdateRow:
    round: int
    device_id: str
    num_samples: int  # what it counted for (the claim, capped)
    norm: float
    eval_accuracy: float | None


@dataclass(frozen=True)
class FailureRow:
    round: int
    device_id: str
    reason: str


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    online: bool
    num_samples: int
    label_counts: str | None  # JSON, as the device shared them (None: not shared)
    first_seen: float
    last_seen: float
    rounds: int
    last_norm: float | None
    last_accuracy: float | None
    release: int | None = None  # the model release it runs, as it said
    release_score: float | None = None  # ... and its accuracy on the device's held-out data


class JournalReader:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.sqlite3"

    def _rows(self, sql: str, *params: object) -> list[tuple[Any, ...]] | None:
        if not self.path.exists():
            return None
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        try:
            return list(db.execute(sql, params))
        except sqlite3.Error:  # not a database, or its tables not created yet
            return None
        finally:
            db.close()

    def exists(self) -> bool:
        """Whether there is a journal with its tables (a state that served at least once)."""
        return self._rows("SELECT 1 FROM rejected LIMIT 1") is not None

    def classes(self) -> tuple[str, ...] | None:
        """The fleet's class list the state was started with (None before the first start)."""
        from ._journal import read_classes

        rows = self._rows("SELECT value FROM meta WHERE key = 'classes'")
        return read_classes(str(rows[0][0])) if rows else None

    def rounds(self) -> list[RoundRow]:
        """Every round, oldest first (the last one may be open)."""
        rows = self._rows(
            "SELECT round, started, closed, accepted, failed, total_weight, timed_out, accuracy, loss, train_loss,"
            " report, configs, bytes_up, bytes_down FROM rounds ORDER BY round"
        )
        return [
            RoundRow(int(n), float(s), c, int(a), int(f), int(w), None if t is None else bool(t), acc, loss, train,
                     report_of(report), tuple(_picked(configs)), up, down)
            for n, s, c, a, f, w, t, acc, loss, train, report, configs, up, down in rows or []
        ]  # fmt: skip

    def closed_rounds(self) -> list[RoundRow]:
        return [r for r in self.rounds() if r.closed is not None]

    def round(self, number: int) -> RoundRow | None:
        return next((r for r in self.rounds() if r.round == number), None)

    def updates(self, round_number: int | None = None) -> list[UpdateRow]:
        """The accepted updates (of one round, or of all), by round and device."""
        rows = self._rows(
            "SELECT round, device_id, num_samples, norm, eval_accuracy FROM updates"
            + ("" if round_number is None else " WHERE round = ?")
            + " ORDER BY round, device_id",
            *(() if round_number is None else (round_number,)),
        )
        return [UpdateRow(int(r), str(d), int(n), float(norm), e) for r, d, n, norm, e in rows or []]

    def failures(self, round_number: int | None = None) -> list[FailureRow]:
        """The boards' failures (and the server's refusals of their updates), by round and device."""
        rows = self._rows(
            "SELECT round, device_id, reason FROM failures"
            + ("" if round_number is None else " WHERE round = ?")
            + " ORDER BY round, device_id",
            *(() if round_number is None else (round_number,)),
        )
        return [FailureRow(int(r), str(d), str(reason)) for r, d, reason in rows or []]

    def rejected(self) -> dict[str, int]:
        """Messages the coordinator refused, counted by reason."""
        return {str(reason): int(count) for reason, count in self._rows("SELECT reason, count FROM rejected") or []}

    def devices(self) -> list[DeviceRow]:
        """Every device that spoke, by name."""
        columns = (
            "device_id, online, num_samples, label_counts, first_seen, last_seen, rounds, last_norm, last_accuracy"
        )
        rows = self._rows(f"SELECT {columns}, release, release_score FROM devices ORDER BY device_id")
        if rows is None:  # a journal from before releases (the server adds the columns when it next starts)
            rows = [(*row, None, None) for row in self._rows(f"SELECT {columns} FROM devices ORDER BY device_id") or []]
        return [
            DeviceRow(str(d), bool(o), int(n), c, float(f), float(s), int(r), norm, acc, release, score)
            for d, o, n, c, f, s, r, norm, acc, release, score in rows
        ]


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

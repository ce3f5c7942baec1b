"""What the coordinator writes down so that nothing it accepted is lost.

The coordinator calls a :class:`Journal` at each step that changes its state,
*before* it acknowledges anything. :class:`NullJournal` keeps nothing (the
in-memory simulation); :class:`SqliteJournal` keeps devices, rounds, accepted
updates and rejection counters in SQLite, update deltas and global models as
content-addressed blobs, and a safetensors checkpoint per closed round::

    STATE_DIR/state.sqlite3
    STATE_DIR/blobs/<sha256>                  global models and pending update deltas
    STATE_DIR/checkpoints/round-0003.safetensors

On restart :meth:`SqliteJournal.resume` returns the last checkpoint and the
open round with its accepted updates, which the coordinator adds again to a
fresh accumulator: the fixed-point sum is order-independent, so the resumed
round ends bit-identical to an uninterrupted one, each update counted once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from protocol import (
    BlobStore,
    ConfigError,
    GenflError,
    ModelError,
    TrainConfig,
    atomic_write,
    blob_id,
    describe_classes,
    validate_classes,
)

log = logging.getLogger("genfl.server")

__all__ = [
    "ClosedRound",
    "AcceptedUpdate",
    "Journal",
    "NullJournal",
    "OpenRoundRecord",
    "ResumePoint",
    "SqliteJournal",
    "read_classes",
    "stored_train_config",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, online INTEGER NOT NULL, num_samples INTEGER NOT NULL,
    label_counts TEXT, first_seen REAL NOT NULL, last_seen REAL NOT NULL, rounds INTEGER NOT NULL DEFAULT 0,
    last_norm REAL, last_accuracy REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, started REAL NOT NULL, closed REAL, base_model TEXT NOT NULL, new_model TEXT,
    configs TEXT NOT NULL, accepted INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    total_weight INTEGER NOT NULL DEFAULT 0, timed_out INTEGER, accuracy REAL, loss REAL, train_loss REAL,
    weight_cap INTEGER, report TEXT, bytes_up INTEGER, bytes_down INTEGER
);
CREATE TABLE IF NOT EXISTS updates (
    round INTEGER NOT NULL, device_id TEXT NOT NULL, num_samples INTEGER NOT NULL, train_loss REAL NOT NULL,
    train_accuracy REAL NOT NULL, norm REAL NOT NULL, delta_blob TEXT NOT NULL, received REAL NOT NULL,
    eval_accuracy REAL, PRIMARY KEY (round, device_id)
);
CREATE TABLE IF NOT EXISTS failures (
    round INTEGER NOT NULL, device_id TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (round, device_id)
);
CREATE TABLE IF NOT EXISTS rejected (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


def _json_or_none(value: object) -> str | None:
    return None if value is None else json.dumps(value)


def read_classes(text: str | None) -> tuple[str, ...] | None:
    """The class list kept in a state's meta table (None when absent or unreadable)."""
    if text is None:
        return None
    try:
        return validate_classes(json.loads(text))
    except (ValueError, RecursionError, GenflError):
        return None


def stored_train_config(values: dict[str, object]) -> TrainConfig:
    """A task's training config as the journal kept it, also from a state written by an earlier release."""
    values = dict(values)
    if "synthetic_frozen_norm" in values:  # once a flag, now one of the synthetic norm modes
        values["synthetic_norm"] = "frozen" if values.pop("synthetic_frozen_norm") else "joint"
    return TrainConfig(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AcceptedUpdate:
    device_id: str
    num_samples: int
    train_loss: float
    train_accuracy: float
    norm: float
    delta: bytes  # safetensors of the delta
    eval_accuracy: float | None = None  # the round's start model on the device's data, as it reported


@dataclass(frozen=True)
class OpenRoundRecord:
    number: int
    started: float
    configs: dict[str, TrainConfig]
    accepted: list[AcceptedUpdate]
    failed: set[str]
    weight_cap: int | None = None


@dataclass(frozen=True)
class ClosedRound:
    """What a round ended with: its new global model (``global_blob``, whose id is ``new_model``) and figures."""

    global_blob: bytes
    new_model: str
    timed_out: bool
    accuracy: float | None = None
    loss: float | None = None
    train_loss: float = 0.0
    report: dict[str, object] | None = None  # the strategy's metrics of the round
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(frozen=True)
class ResumePoint:
    global_blob: bytes
    round_number: int  # the last round opened (0 = none yet)
    open_round: OpenRoundRecord | None


class Journal:
    """The in-memory base (the simulation's): keeps only the open round's accepted updates, which a withdrawal
    takes back."""

    def __init__(self) -> None:
        self._open_updates: dict[tuple[int, str], AcceptedUpdate] = {}

    def resume(self) -> ResumePoint | None:
        return None

    def start(self, model_name: str, fleet: str, global_blob: bytes, classes: tuple[str, ...]) -> None:
        """A new state: its model, fleet and class list; on a state that has them, refuses others."""

    def device_seen(
        self, device_id: str, online: bool, num_samples: int, label_counts: tuple[float, ...] | None,
        retained: bool = False,
    ) -> None: ...  # fmt: skip

    def round_opened(
        self, number: int, started: float, base_model: str, configs: dict[str, TrainConfig], weight_cap: int | None
    ) -> None: ...

    def update_accepted(self, round_number: int, update: AcceptedUpdate) -> None:
        self._open_updates[(round_number, update.device_id)] = update

    def accepted_update(self, round_number: int, device_id: str) -> AcceptedUpdate | None:
        """The update of ``device_id`` accepted in the open round ``round_number``, if there is one."""
        return self._open_updates.get((round_number, device_id))

    def failure_recorded(self, round_number: int, device_id: str, reason: str) -> None: ...

    def sum_unmasked(self, round_number: int, survivors: list[str], total_weight: int) -> None:
        """A secure round's sum: who is in it and its total weight (no single update exists to record)."""

    def device_release(self, device_id: str, release: int | None, score: float | None) -> None:
        """The model release a device says it runs, and how it scored there."""

    def update_withdrawn(self, round_number: int, device_id: str) -> None:
        self._open_updates.pop((round_number, device_id), None)

    def round_closed(self, number: int, closed: ClosedRound) -> None:
        self._open_updates.clear()

    def rejected(self, reason: str) -> None: ...

    def round_reports(self) -> list[dict[str, object]]:
        """The closed rounds' strategy reports, oldest first (what a restarted strategy may take up again)."""
        return []


NullJournal = Journal

_UPDATE_COLUMNS = "device_id, num_samples, train_loss, train_accuracy, norm, delta_blob, eval_accuracy"


class SqliteJournal(Journal):
    def __init__(self, state_dir: Path) -> None:
        super().__init__()
        self.state_dir = state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(state_dir, 0o700)
            self.blobs = BlobStore(state_dir / "blobs")
            self._db = sqlite3.connect(state_dir / "state.sqlite3", isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(rounds)")}
            if "weight_cap" not in columns:  # a state dir from before the weight cap
                self._db.execute("ALTER TABLE rounds ADD COLUMN weight_cap INTEGER")
            if "report" not in columns:  # ... from before the strategies' round reports
                self._db.execute("ALTER TABLE rounds ADD COLUMN report TEXT")
            for column in ("bytes_up", "bytes_down"):  # ... from before rounds kept their traffic
                if column not in columns:
                    self._db.execute(f"ALTER TABLE rounds ADD COLUMN {column} INTEGER")
            device_columns = {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}
            for column, kind in (("release", "INTEGER"), ("release_score", "REAL")):  # ... before releases
                if column not in device_columns:
                    self._db.execute(f"ALTER TABLE devices ADD COLUMN {column} {kind}")
            if "eval_accuracy" not in {row[1] for row in self._db.execute("PRAGMA table_info(updates)")}:
                self._db.execute("ALTER TABLE updates ADD COLUMN eval_accuracy REAL")  # ... before updates kept it
        except (OSError, sqlite3.Error) as exc:
            raise GenflError(f"cannot use state dir {state_dir}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once: no other writer in between); a failed one changes nothing and
        is a GenflError that says what could not be done."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
        except sqlite3.Error as exc:
            raise GenflError(f"state dir {self.state_dir}: cannot {what} ({exc})") from exc

    def _write(self, sql: str, *params: object) -> None:
        with self._transaction("write") as db:
            db.execute(sql, params)

    # -- reading -------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def checkpoint_path(self, number: int) -> Path:
        return self.state_dir / "checkpoints" / f"round-{number:04d}.safetensors"

    def latest_checkpoint(self) -> Path | None:
        paths = sorted((self.state_dir / "checkpoints").glob("round-*.safetensors"))
        return paths[-1] if paths else None

    def _global_blob(self, current: str) -> bytes:
        """The global model the journal names: the latest checkpoint if it is whole (its hash is the model's id),
        else the copy in the blob store; ModelError naming the file if neither is."""
        checkpoint = self.latest_checkpoint()
        why = "is missing"
        if checkpoint is not None:
            try:
                blob = checkpoint.read_bytes()
                if blob_id(blob) == current:
                    return blob
                why = f"({checkpoint}) is damaged: its sha256 is not the model's"
            except OSError as exc:
                why = f"({checkpoint}) cannot be read: {exc}"
        try:
            blob = self.blobs.get(current)
        except (KeyError, OSError):
            raise ModelError(
                f"state dir {self.state_dir}: the checkpoint of the global model {current[:12]} {why}, and the blob "
                "store holds no good copy: restore the state from a backup"
            ) from None
        log.warning("the checkpoint of model %s %s; resuming from the blob store's copy", current[:12], why)
        return blob

    def resume(self) -> ResumePoint | None:
        current = self.meta("global_model")
        if current is None:
            return None
        blob = self._global_blob(current)
        row = self._db.execute(
            "SELECT round, started, closed, configs, weight_cap FROM rounds ORDER BY round DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return ResumePoint(blob, 0, None)
        number, started, closed, configs_json, cap = row
        if closed is not None:
            return ResumePoint(blob, int(number), None)
        configs = {d: stored_train_config(c) for d, c in json.loads(configs_json).items()}
        accepted = [
            AcceptedUpdate(d, n, loss, acc, norm, self.blobs.get(b), evaluated)
            for d, n, loss, acc, norm, b, evaluated in self._db.execute(
                f"SELECT {_UPDATE_COLUMNS} FROM updates WHERE round = ? ORDER BY device_id", (number,)
            )
        ]
        failed = {d for (d,) in self._db.execute("SELECT device_id FROM failures WHERE round = ?", (number,))}
        record = OpenRoundRecord(
            int(number), float(started), configs, accepted, failed, None if cap is None else int(cap)
        )
        return ResumePoint(blob, int(number), record)

    # -- writing -------------------------------------------------------------------------------

    def classes(self) -> tuple[str, ...] | None:
        """The fleet's class list this state was started with (None: a state from before class lists)."""
        text = self.meta("classes")
        classes = read_classes(text)
        if text is not None and classes is None:
            raise GenflError(f"state dir {self.state_dir}: its class list is unreadable ({text[:80]!r})")
        return classes

    def start(self, model_name: str, fleet: str, global_blob: bytes, classes: tuple[str, ...]) -> None:
        known = self.meta("model_name")
        if known is not None and (known, self.meta("fleet")) != (model_name, fleet):
            raise ConfigError(
                f"state dir {self.state_dir} belongs to fleet {self.meta('fleet')!r} with model {known!r}; "
                "use another --state-dir"
            )
        stored = self.classes()
        if stored is not None and stored != tuple(classes):
            raise ConfigError(
                f"state dir {self.state_dir} numbers its classes {describe_classes(stored)}, not "
                f"{describe_classes(classes)}: the model learned that order (give those --classes, or another "
                "--state-dir)"
            )
        if stored is None:
            self._write("INSERT OR REPLACE INTO meta VALUES ('classes', ?)", json.dumps(list(classes)))
        if known is None:
            ident = self.blobs.put(global_blob)
            self.checkpoint_path(0).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.checkpoint_path(0), global_blob)
            with self._transaction("start the state") as db:
                for key, value in (("model_name", model_name), ("fleet", fleet), ("global_model", ident)):
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def device_seen(
        self, device_id: str, online: bool, num_samples: int, label_counts: tuple[float, ...] | None,
        retained: bool = False,
    ) -> None:  # fmt: skip
        """Record a device's state. ``retained``: maybe the broker's stored copy, which a (re)started server gets
        at once: it moves "last seen" only if it says something the journal does not already hold."""
        now = time.time()
        keep = (
            "CASE WHEN devices.online = excluded.online AND devices.num_samples = excluded.num_samples"
            " AND devices.label_counts IS excluded.label_counts THEN devices.last_seen ELSE excluded.last_seen END"
            if retained
            else "excluded.last_seen"
        )
        self._write(
            "INSERT INTO devices (device_id, online, num_samples, label_counts, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET online = excluded.online,"
            f" num_samples = excluded.num_samples, label_counts = excluded.label_counts, last_seen = {keep}",
            device_id,
            int(online),
            num_samples,
            None if label_counts is None else json.dumps(label_counts),
            now,
            now,
        )

    def round_opened(
        self, number: int, started: float, base_model: str, configs: dict[str, TrainConfig], weight_cap: int | None
    ) -> None:
        self._write(
            "INSERT INTO rounds (round, started, base_model, configs, weight_cap) VALUES (?, ?, ?, ?, ?)",
            number,
            started,
            base_model,
            json.dumps({d: asdict(c) for d, c in configs.items()}),
            weight_cap,
        )

    def update_accepted(self, round_number: int, update: AcceptedUpdate) -> None:
        try:
            blob = self.blobs.put(update.delta)
        except OSError as exc:
            raise GenflError(f"state dir {self.state_dir}: cannot store an update ({exc})") from exc
        with self._transaction("record an update") as db:
            db.execute(
                "INSERT INTO updates (round, device_id, num_samples, train_loss, train_accuracy, norm, delta_blob,"
                " received, eval_accuracy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (round_number, update.device_id, update.num_samples, update.train_loss,
                 update.train_accuracy, update.norm, blob, time.time(), update.eval_accuracy),
            )  # fmt: skip
            db.execute(
                "UPDATE rounds SET accepted = accepted + 1, total_weight = total_weight + ? WHERE round = ?",
                (update.num_samples, round_number),
            )
            db.execute(
                "UPDATE devices SET rounds = rounds + 1, last_norm = ?, last_accuracy = ?, last_seen = ?"
                " WHERE device_id = ?",
                (update.norm, update.train_accuracy, time.time(), update.device_id),
            )

    def failure_recorded(self, round_number: int, device_id: str, reason: str) -> None:
        self._write("INSERT OR IGNORE INTO failures VALUES (?, ?, ?)", round_number, device_id, reason[:2000])
        self._write("UPDATE rounds SET failed = failed + 1 WHERE round = ?", round_number)

    def device_release(self, device_id: str, release: int | None, score: float | None) -> None:
        self._write("UPDATE devices SET release = ?, release_score = ? WHERE device_id = ?", release, score, device_id)

    def sum_unmasked(self, round_number: int, survivors: list[str], total_weight: int) -> None:
        with self._transaction("record a secure round's sum") as db:
            db.execute("UPDATE rounds SET accepted = ?, total_weight = ? WHERE round = ?",
                       (len(survivors), total_weight, round_number))  # fmt: skip
            db.executemany("UPDATE devices SET rounds = rounds + 1, last_seen = ? WHERE device_id = ?",
                           [(time.time(), device_id) for device_id in survivors])  # fmt: skip

    def accepted_update(self, round_number: int, device_id: str) -> AcceptedUpdate | None:
        row = self._db.execute(
            f"SELECT {_UPDATE_COLUMNS} FROM updates WHERE round = ? AND device_id = ?", (round_number, device_id)
        ).fetchone()
        if row is None:
            return None
        d, n, loss, acc, norm, b, evaluated = row
        return AcceptedUpdate(d, n, loss, acc, norm, self.blobs.get(b), evaluated)

    def update_withdrawn(self, round_number: int, device_id: str) -> None:
        """A revoked device's accepted update leaves the open round (it is not aggregated, not resumed)."""
        with self._transaction("withdraw an update") as db:
            row = db.execute(
                "DELETE FROM updates WHERE round = ? AND device_id = ? RETURNING num_samples",
                (round_number, device_id),
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE rounds SET accepted = accepted - 1, total_weight = total_weight - ? WHERE round = ?",
                    (row[0], round_number),
                )

    def round_closed(self, number: int, closed: ClosedRound) -> None:
        try:
            self.blobs.put(closed.global_blob)
            atomic_write(self.checkpoint_path(number), closed.global_blob)
        except OSError as exc:
            raise GenflError(f"state dir {self.state_dir}: cannot write the round {number} checkpoint ({exc})") from exc
        with self._transaction(f"close round {number}") as db:
            db.execute(
                "UPDATE rounds SET closed = ?, new_model = ?, timed_out = ?, accuracy = ?, loss = ?,"
                " train_loss = ?, report = ?, bytes_up = ?, bytes_down = ? WHERE round = ?",
                (
                    time.time(),
                    closed.new_model,
                    int(closed.timed_out),
                    closed.accuracy,
                    closed.loss,
                    closed.train_loss,
                    _json_or_none(closed.report),
                    closed.bytes_up,
                    closed.bytes_down,
                    number,
                ),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('global_model', ?)", (closed.new_model,))
        # The deltas are folded into the checkpoint now; their blobs are no longer needed.
        for (blob,) in self._db.execute("SELECT delta_blob FROM updates WHERE round = ?", (number,)).fetchall():
            path = self.state_dir / "blobs" / blob
            path.unlink(missing_ok=True)

    def rejected(self, reason: str) -> None:
        with contextlib.suppress(GenflError):  # a counter is not worth failing for
            self._write(
                "INSERT INTO rejected VALUES (?, 1) ON CONFLICT(reason) DO UPDATE SET count = count + 1", reason
            )

    def round_reports(self) -> list[dict[str, object]]:
        rows = self._db.execute("SELECT report FROM rounds WHERE closed IS NOT NULL ORDER BY round").fetchall()
        reports = []
        for (text,) in rows:
            try:
                value = json.loads(text) if text is not None else None
            except (ValueError, RecursionError):
                value = None
            if isinstance(value, dict):
                reports.append(value)
        return reports

    def close(self) -> None:
        self._db.close()

"""Enrolled devices and enrollment tokens (``STATE_DIR/security/registry.sqlite3``, mode 0600).

A token is printed once by ``genfl-server devices add`` and stored only as its
SHA-256 (it is 192 random bits, so a plain hash cannot be searched). Redeeming
one is a single transaction: unknown, used and expired tokens fail with the
reason, and a token redeems at most once even when two requests race.

Each token carries its own broker login (``enroll-<12 hex>``), whose only
right is to send that token's request and read its reply. The login exists
while the token is pending: once the token is redeemed or expired it leaves the
password file at the next sync, so a token that leaked after use opens nothing.

Each device row holds its Ed25519 public key (which verifies its updates) and
the hashes of its broker password (Mosquitto's PBKDF2 and, for a NATS cluster,
bcrypt); the password itself is sent to the device once, at enrollment, and
never stored.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import ConfigError, GenflError, ProtocolError, public_key_from_text, validate_name

from ..broker._broker_files import mosquitto_password_hash
from ..broker._cluster_users import nats_password_hash

__all__ = [
    "ENROLL_USER_PREFIX",
    "DeviceEntry",
    "DeviceRegistry",
    "EnrollmentRefused",
    "Enrolled",
    "NewToken",
    "Revoked",
    "RESERVED_NAMES",
]

RESERVED_NAMES = frozenset({"genfl-server", "genfl-enroll", "server"})
ENROLL_USER_PREFIX = "enroll-"  # the enrollment logins; no device may be called like them

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, used REAL,
    enroll_user TEXT, enroll_hash TEXT, cancelled REAL, enroll_cluster_hash TEXT
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, password_hash TEXT NOT NULL,
    enrolled REAL NOT NULL, revoked REAL, cluster_hash TEXT
);
"""

BrokerKind = Literal["mosquitto", "nats"]
# the column holding each broker's hash of a login's password
_HASH = {"mosquitto": ("password_hash", "enroll_hash"), "nats": ("cluster_hash", "enroll_cluster_hash")}


class EnrollmentRefused(GenflError):
    """A token that is unknown, used or expired (the reason goes back to the device)."""

    exit_code = 2


@dataclass(frozen=True)
class DeviceEntry:
    device_id: str
    public_key: str
    enrolled: float
    revoked: float | None


@dataclass(frozen=True)
class NewToken:
    secret: str  # proves the token at redemption and keys the HMAC of the reply
    enroll_user: str  # the broker login of this token alone
    enroll_password: str = field(repr=False)


@dataclass(frozen=True)
class Revoked:
    """What ``revoke`` did."""

    device: bool  # an enrolled device was revoked now
    already: bool  # it had been revoked before
    tokens_cancelled: int  # pending tokens for the name, cancelled

    def __str__(self) -> str:
        done = ["revoked" if self.device else "already revoked" if self.already else ""]
        if self.tokens_cancelled:
            done.append(f"cancelled {self.tokens_cancelled} pending token{'s' if self.tokens_cancelled > 1 else ''}")
        return "; ".join(part for part in done if part)


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    broker_password: str  # sent to the device once; only its hash is kept


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class DeviceRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists()
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
            if fresh:
                os.chmod(path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            # a registry from before per-token logins, before tokens could be cancelled, before cluster logins
            for table, column, kind in (("tokens", "enroll_user", "TEXT"), ("tokens", "enroll_hash", "TEXT"),
                                        ("tokens", "cancelled", "REAL"), ("tokens", "enroll_cluster_hash", "TEXT"),
                                        ("devices", "cluster_hash", "TEXT")):  # fmt: skip
                columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except (OSError, sqlite3.Error) as exc:
            raise GenflError(f"cannot open the device registry {path}: {exc}") from exc
        self._cache: dict[str, tuple[Ed25519PublicKey | None, bool]] = {}
        self._version = -1

    def close(self) -> None:
        self._db.close()

    # -- tokens ----------------------------------------------------------------------------------

    def add_token(self, name: str, ttl_s: float, *, readmit: bool = False, now: float | None = None) -> NewToken:
        """A new single-use token for a device to be called ``name``, with its own enrollment login.

        A revoked device's name takes a token only with ``readmit``: redeeming it enrolls the board again, with
        the new key and password it brings (nothing of the revoked identity is trusted again).
        """
        validate_name("device name", name)
        if name in RESERVED_NAMES or name.startswith(ENROLL_USER_PREFIX):
            raise ConfigError(f"{name!r} is reserved; choose another device name")
        if ttl_s <= 0:
            raise ConfigError("a token must expire in the future")
        now = time.time() if now is None else now
        token = NewToken(
            secrets.token_urlsafe(24), ENROLL_USER_PREFIX + secrets.token_hex(6), secrets.token_urlsafe(24)
        )
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT revoked FROM devices WHERE device_id = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise ConfigError(
                    f"a device called {name!r} is already enrolled (to re-admit it with a new key: "
                    f"`devices revoke {name}`, then `devices add {name} --readmit`)"
                )
            if row is not None and not readmit:
                raise ConfigError(
                    f"a device called {name!r} was revoked; `devices add {name} --readmit` issues a token that "
                    "enrolls it again (the board enrolls anew: new key, new password)"
                )
            self._db.execute(
                "INSERT INTO tokens (token_hash, name, created, expires, enroll_user, enroll_hash, enroll_cluster_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_token_hash(token.secret), name, now, now + ttl_s, token.enroll_user,
                 mosquitto_password_hash(token.enroll_password), nats_password_hash(token.enroll_password)),
            )  # fmt: skip
        return token

    def redeem(
        self,
        secret: str,
        public_key: str,
        *,
        enroll_user: str | None = None,
        now: float | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> Enrolled:
        """Use a token once: the device ``name`` is enrolled with ``public_key`` and a new broker password.

        ``enroll_user``, when given, must be the token's own enrollment login (the one the request came
        from). ``before_commit`` runs inside the transaction, after the device was added: if it raises,
        nothing happened (the token stays unused), which is how the broker files are written first.
        """
        public_key_from_text(public_key)  # a well-formed key, or ConfigError
        now = time.time() if now is None else now
        password = secrets.token_urlsafe(24)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT name, created, expires, used, enroll_user, cancelled FROM tokens WHERE token_hash = ?",
                (_token_hash(secret),),
            ).fetchone()
            if row is None:
                raise EnrollmentRefused("unknown enrollment token")
            name, created, expires, used, token_user, cancelled = row
            if cancelled is not None:
                raise EnrollmentRefused("this enrollment token was cancelled; ask for a new one")
            if used is not None:
                raise EnrollmentRefused("this enrollment token was already used")
            if now > expires:
                raise EnrollmentRefused("this enrollment token has expired; ask for a new one")
            if enroll_user is not None and enroll_user != token_user:
                raise EnrollmentRefused("this token belongs to another enrollment login")
            existing = self._db.execute("SELECT revoked FROM devices WHERE device_id = ?", (name,)).fetchone()
            if existing is not None:
                # only a token made after the device was revoked (``--readmit``) brings it back
                if existing[0] is None or created < existing[0]:
                    raise EnrollmentRefused(f"a device called {name!r} is already enrolled")
                self._db.execute("DELETE FROM devices WHERE device_id = ?", (name,))
            self._db.execute("UPDATE tokens SET used = ? WHERE token_hash = ?", (now, _token_hash(secret)))
            self._db.execute(
                "INSERT INTO devices (device_id, public_key, password_hash, enrolled, cluster_hash)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, public_key, mosquitto_password_hash(password), now, nats_password_hash(password)),
            )
            if before_commit is not None:
                before_commit()  # raises: the with-block rolls everything back
        self._cache.clear()
        return Enrolled(device_id=str(name), broker_password=password)

    def pending_tokens(self, *, now: float | None = None) -> list[tuple[str, float]]:
        now = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT name, expires FROM tokens WHERE used IS NULL AND cancelled IS NULL AND expires >= ? ORDER BY name",
            (now,),
        )
        return [(str(n), float(e)) for n, e in rows]

    def enrollment_users(
        self, *, now: float | None = None, keep: Collection[str] = (), broker: BrokerKind = "mosquitto"
    ) -> list[tuple[str, str]]:
        """(login, ``broker``'s password hash) of every pending token: unused, unexpired, with a login; and the
        logins ``keep`` even if their tokens were just used (their boards still wait for the reply)."""
        now = time.time() if now is None else now
        column = _HASH[broker][1]
        rows = self._db.execute(
            f"SELECT enroll_user, {column} FROM tokens WHERE cancelled IS NULL AND enroll_user IS NOT NULL"
            f" AND {column} IS NOT NULL AND used IS NULL AND expires >= ? ORDER BY enroll_user",
            (now,),
        )
        found = [(str(u), str(h)) for u, h in rows]
        for login in sorted(set(keep) - {u for u, _ in found}):
            row = self._db.execute(
                f"SELECT {column} FROM tokens WHERE enroll_user = ? AND cancelled IS NULL AND {column} IS NOT NULL",
                (login,),
            ).fetchone()
            if row is not None:
                found.append((login, str(row[0])))
        return sorted(found)

    # -- devices ---------------------------------------------------------------------------------

    def revoke(self, device_id: str, *, now: float | None = None) -> Revoked:
        """Cut ``device_id`` off: its enrollment revoked and every token still pending for the name cancelled
        (a token not used yet can no longer enroll). ConfigError if the name has neither."""
        now = time.time() if now is None else now
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cancelled = self._db.execute(
                "UPDATE tokens SET cancelled = ? WHERE name = ? AND used IS NULL AND cancelled IS NULL"
                " AND expires >= ?",
                (now, device_id, now),
            ).rowcount
            row = self._db.execute("SELECT revoked FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None and not cancelled:
                raise ConfigError(f"no enrolled device and no pending token called {device_id!r}")
            if row is not None and row[0] is None:
                self._db.execute("UPDATE devices SET revoked = ? WHERE device_id = ?", (now, device_id))
        self._cache.clear()
        return Revoked(device=row is not None and row[0] is None, already=row is not None and row[0] is not None,
                       tokens_cancelled=cancelled)  # fmt: skip

    def devices(self) -> list[DeviceEntry]:
        rows = self._db.execute("SELECT device_id, public_key, enrolled, revoked FROM devices ORDER BY device_id")
        return [DeviceEntry(str(d), str(k), float(e), None if r is None else float(r)) for d, k, e, r in rows]

    def broker_users(self, broker: BrokerKind = "mosquitto") -> list[tuple[str, str]]:
        """(user name, ``broker``'s password hash) of every device that is not revoked and has one (a board
        enrolled before the registry kept cluster hashes has none for the cluster)."""
        column = _HASH[broker][0]
        rows = self._db.execute(
            f"SELECT device_id, {column} FROM devices WHERE revoked IS NULL AND {column} IS NOT NULL ORDER BY device_id"
        )
        return [(str(d), str(h)) for d, h in rows]

    def without_login(self, broker: BrokerKind) -> list[str]:
        """The devices that are not revoked but have no ``broker`` login (enrolled before it was kept)."""
        column = _HASH[broker][0]
        rows = self._db.execute(f"SELECT device_id FROM devices WHERE revoked IS NULL AND {column} IS NULL")
        return [str(d) for (d,) in rows]

    def _refresh(self) -> None:
        # data_version changes whenever another connection (``devices revoke``) commits: re-read then.
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._version:
            self._version = version
            self._cache.clear()

    def revoked_ids(self) -> set[str]:
        self._refresh()
        return {str(d) for (d,) in self._db.execute("SELECT device_id FROM devices WHERE revoked IS NOT NULL")}

    def public_key(self, device_id: str) -> Ed25519PublicKey:
        """The key that verifies ``device_id``'s frames, or ProtocolError ``unknown-device`` / ``revoked``."""
        self._refresh()
        cached = self._cache.get(device_id)
        if cached is None:
            row = self._db.execute(
                "SELECT public_key, revoked FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
            cached = (None, False) if row is None else (public_key_from_text(row[0]), row[1] is not None)
            self._cache[device_id] = cached
        key, revoked = cached
        if key is None:
            raise ProtocolError("unknown-device", device_id)
        if revoked:
            raise ProtocolError("revoked", device_id)
        return key


def read_enrollments(path: Path) -> list[tuple[str, float, float | None]] | None:
    """(device, enrolled at, revoked at) of every device in the registry at ``path``, read-only, by name; None when
    there is no registry (an open fleet) or it cannot be read."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = db.execute("SELECT device_id, enrolled, revoked FROM devices ORDER BY device_id").fetchall()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return [(str(d), float(e), None if r is None else float(r)) for d, e, r in rows]

"""What a Mosquitto broker needs for a secured fleet: config, password file, ACL.

The password file uses Mosquitto 2's ``$7$`` format (PBKDF2-HMAC-SHA512,
101 iterations, 12-byte salt, base64), which ``mosquitto_passwd`` writes too.
The ACL confines each device to its own subtree, and to the direction each
channel goes; each pending enrollment token's login may only write its request
and read its reply::

    user genfl-server
    topic readwrite genfl/<fleet>/#
    user <device>
    topic readwrite genfl/<fleet>/devices/<device>/state  (it answers a late will of its own)
    topic write genfl/<fleet>/devices/<device>/update     (and blob/req)
    topic read  genfl/<fleet>/devices/<device>/task       (and ack, blob/chunk)
    user enroll-<12 hex>
    topic write genfl/<fleet>/enroll/enroll-<12 hex>/request
    topic read  genfl/<fleet>/enroll/enroll-<12 hex>/reply

The listener sets ``use_username_as_clientid``: the broker replaces whatever
client id a client asks for with its user name, so nobody can take over the
server's session (or a device's) by claiming its client id, and
``max_packet_size``, so that no client can send more than the fleet's largest
message. Mosquitto re-reads both files on SIGHUP and re-checks every connected
client against them, so a revoked device (or a used token's login) is
disconnected at the reload and cannot connect again.

The broker runs as its own user and reads these files; the server (often root)
writes them. Ownership and mode are set on the open file before it is renamed
into place, and nothing is ever changed by path afterwards, so the broker user,
who may own the directory, cannot redirect a write or a ``chown`` with a symlink.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from protocol import ConfigError, GenflError, Topics, atomic_write

__all__ = [
    "SERVER_USER",
    "BrokerFiles",
    "BrokerSyncLate",
    "mosquitto_password_hash",
    "install_outbox",
    "read_outbox",
    "render_acl",
    "render_mosquitto_conf",
    "render_password_file",
    "write_owned",
]

SERVER_USER = "genfl-server"
_ITERATIONS = 101


def mosquitto_password_hash(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def render_password_file(users: list[tuple[str, str]]) -> str:
    return "".join(f"{user}:{hashed}\n" for user, hashed in users)


def render_acl(fleet: str, devices: list[str], enroll_users: list[str] = ()) -> str:  # type: ignore[assignment]
    topics = Topics(fleet)
    lines = [
        f"# genfl-edge fleet {fleet}: written by genfl-server; edits are overwritten at the next enrollment.",
        f"user {SERVER_USER}",
        f"topic readwrite {topics.root}/#",
        "",
    ]
    for device in devices:
        lines.append(f"user {device}")
        lines.append(f"topic readwrite {topics.device(device, 'state')}")
        lines += [f"topic write {topics.device(device, c)}" for c in ("update", "blob/req")]  # type: ignore[arg-type]
        lines += [f"topic read {topics.device(device, c)}" for c in ("task", "ack", "blob/chunk")]  # type: ignore[arg-type]
        lines.append("")
    for login in enroll_users:  # one per pending token: its own request and reply, nothing else
        lines.append(f"user {login}")
        lines.append(f"topic write {topics.root}/enroll/{login}/request")
        lines.append(f"topic read {topics.root}/enroll/{login}/reply")
        lines.append("")
    return "\n".join(lines)


def render_mosquitto_conf(directory: Path, port: int, *, bind: str = "", user: str = "",
                          max_packet_size: int = 4 * 1024 * 1024) -> str:  # fmt: skip
    d = directory.resolve()
    return "\n".join(
        [
            "# genfl-edge broker: written by `genfl-server broker-config`.",
            "# Run: mosquitto -c THIS_FILE   (reload after enrollments: kill -HUP $(cat mosquitto.pid))",
            # Started as root, Mosquitto drops to this user; it must be able to read the files here.
            *([f"user {user}"] if user else []),
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {d / 'passwd'}",
            f"acl_file {d / 'acl'}",
            f"pid_file {d / 'mosquitto.pid'}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            # The largest message the fleet sends (an update of the largest model, a blob chunk), with room to
            # spare; a client that sends more is disconnected.
            f"max_packet_size {max_packet_size}",
            # Clients queue at most this much for a client that is away (a board offline for days).
            "max_queued_bytes 268435456",
            f"listener {port}{' ' + bind if bind else ''}",
            # The client id is the user name: nobody can claim the server's (or a device's) session.
            "use_username_as_clientid true",
            f"cafile {d / 'ca.crt'}",
            f"certfile {d / 'server.crt'}",
            f"keyfile {d / 'server.key'}",
            "tls_version tlsv1.2",
            "require_certificate false",
            "",
        ]
    )


def write_owned(path: Path, data: bytes, *, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Write ``path`` atomically with ``mode`` and ``owner`` set on the open file before it is renamed in
    (:func:`protocol.atomic_write`): the rename replaces a name, never a link's target."""
    atomic_write(path, data, mode=mode, owner=owner)


RECEIPT = "installed"  # what genfl-broker-sync writes into the outbox once it installed the files
SYNC_WAIT_S = 20.0  # how long a caller that must know waits for the sync unit
_POKE_EVERY_S = 3.0  # a change written while the sync ran is not seen by systemd: write it again


class BrokerSyncLate(GenflError):
    """The sync unit did not install the outbox's files in time (not enabled, failing, or very slow)."""


def outbox_digest(passwd: bytes, acl: bytes) -> str:
    """Names one version of the two files: the server compares the sync unit's receipt with what it wrote."""
    return hashlib.sha256(len(passwd).to_bytes(8, "big") + passwd + acl).hexdigest()


@dataclass
class BrokerFiles:
    """The broker directory ``broker-config`` wrote, and how to make the broker re-read it."""

    directory: Path
    fleet: str
    reload_command: tuple[str, ...] = ()  # e.g. ("systemctl", "reload", "mosquitto"); default: SIGHUP via pid file
    # A server that runs as its own user (the hardened unit) may not write the broker's folder: it writes the
    # files here, in its state, and the root `genfl-broker-sync` unit installs them, reloads the broker and
    # leaves a receipt (the digest of what it installed) beside them.
    outbox: Path | None = None
    _poked: float = field(default=0.0, init=False, repr=False)
    _lagging_since: float | None = field(default=None, init=False, repr=False)

    kind: ClassVar[Literal["mosquitto"]] = "mosquitto"

    @staticmethod
    def password_hash(password: str) -> str:
        return mosquitto_password_hash(password)

    @property
    def handed_off(self) -> bool:
        """Whether changes are the sync unit's to install (an outbox, and a broker folder we may not write)."""
        return self.outbox is not None and not os.access(self.directory, os.W_OK)

    def write_users(
        self,
        server_password_hash: str,
        devices: list[tuple[str, str]],
        enroll_users: list[tuple[str, str]],
        revoked: Sequence[str] = (),
    ) -> None:
        """The password file and the ACL: the server, every device given, every pending token's login. A revoked
        device's login is dropped (``revoked`` is for the cluster, which must keep it locked instead)."""
        del revoked
        users = [(SERVER_USER, server_password_hash), *devices, *enroll_users]
        passwd = render_password_file(users).encode()
        acl = render_acl(self.fleet, [d for d, _ in devices], [u for u, _ in enroll_users]).encode()
        if self.outbox is not None:
            self.outbox.mkdir(mode=0o700, exist_ok=True)
            self._write(self.outbox / "passwd", passwd, self.outbox)
            self._write(self.outbox / "acl", acl, self.outbox)  # last: the sync unit watches it
            self._poked = time.monotonic()
        if not self.handed_off:
            self.install(passwd, acl)

    def receipt(self) -> tuple[str, bool] | None:
        """(digest, whether a broker was reloaded) of the files the sync unit installed last, or None."""
        if self.outbox is None:
            return None
        try:
            digest, _, outcome = (self.outbox / RECEIPT).read_text().strip().partition(" ")
        except (OSError, UnicodeDecodeError):
            return None
        return digest, outcome == "reloaded"

    def synced(self) -> bool:
        """Whether the sync unit installed what the outbox holds now (always true unless changes are handed off)."""
        if not self.handed_off:
            return True
        assert self.outbox is not None
        try:
            current = outbox_digest((self.outbox / "passwd").read_bytes(), (self.outbox / "acl").read_bytes())
        except OSError:
            return True  # nothing written yet
        receipt = self.receipt()
        return receipt is not None and receipt[0] == current

    def follow_up(self) -> bool:
        """Between waits: if the sync unit has not installed the outbox a while after it changed (systemd does not
        see a change written while the sync ran), touch the watched file again, without changing it (another
        process may have written newer files); True while it lags."""
        if self.synced():
            self._lagging_since = None
            return False
        now = time.monotonic()
        if self._lagging_since is None:
            self._lagging_since = now
        if now - self._poked >= _POKE_EVERY_S:
            assert self.outbox is not None
            self._poked = now
            with contextlib.suppress(OSError):  # opened for writing and closed: systemd's PathChanged= fires
                descriptor = os.open(self.outbox / "acl", os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    os.utime(descriptor)
                finally:
                    os.close(descriptor)
        return True

    def lagging_s(self) -> float:
        """How long the sync unit has lagged behind the outbox (0 when it has not, as of the last follow-up)."""
        return 0.0 if self._lagging_since is None else time.monotonic() - self._lagging_since

    def install(self, passwd: bytes, acl: bytes) -> None:
        """Write the two files into the broker's folder, owned by its owner (the broker's user)."""
        self._write(self.directory / "passwd", passwd, self.directory)
        self._write(self.directory / "acl", acl, self.directory)

    def logins(self, prefix: str) -> set[str]:
        """The user names in the password file that start with ``prefix`` (empty if there is none yet)."""
        folder = self.outbox if self.outbox is not None and (self.outbox / "passwd").exists() else self.directory
        try:
            text = (folder / "passwd").read_text()
        except (OSError, UnicodeDecodeError):
            return set()
        return {line.split(":", 1)[0] for line in text.splitlines() if line.startswith(prefix)}

    @staticmethod
    def _owner(folder: Path) -> tuple[int, int] | None:
        """Whoever owns ``folder`` (the broker's user; the server's, for the outbox) when we are root."""
        if os.geteuid() != 0:
            return None
        info = os.stat(folder)
        return info.st_uid, info.st_gid

    def _write(self, path: Path, data: bytes, folder: Path) -> None:
        try:
            write_owned(path, data, mode=0o600, owner=self._owner(folder))
        except OSError as exc:
            raise GenflError(f"cannot write the broker's {path.name} in {folder}: {exc.strerror or exc}") from exc

    def broker_pid(self) -> int | None:
        """The pid in the pid file, if it is a running mosquitto of the directory's owner (the file is the
        broker user's to write: we must not signal whatever it names)."""
        pid_file = self.directory / "mosquitto.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{pid_file}: not a pid ({exc})") from exc
        proc = Path(f"/proc/{pid}")
        try:
            name = (proc / "comm").read_text().strip()
            uid = proc.stat().st_uid
        except OSError:
            return None  # not running
        if pid <= 1 or name != "mosquitto" or uid not in (os.stat(self.directory).st_uid, 0):
            raise GenflError(f"{pid_file} names pid {pid} ({name}), not this broker; not signalling it")
        return pid

    def reload(self, wait_s: float = SYNC_WAIT_S) -> bool:
        """Have the broker re-read its files; False if no broker runs from this directory.

        A handed-off change is the sync unit's to install: wait up to ``wait_s`` for its receipt (False at once
        with ``wait_s`` 0: :meth:`follow_up` keeps at it), writing the files again while it lags; raises
        :class:`BrokerSyncLate` if it never comes."""
        if self.handed_off:
            return self._wait_for_sync(wait_s)
        if self.reload_command:
            try:
                subprocess.run(list(self.reload_command), check=True, capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as exc:
                raise GenflError(f"reloading the broker with {' '.join(self.reload_command)} failed: {exc}") from exc
            return True
        pid = self.broker_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise GenflError(f"cannot signal the broker (pid {pid}): {exc}; set a reload command") from exc
        return True

    def _wait_for_sync(self, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while self.follow_up():
            if time.monotonic() >= deadline:
                if wait_s <= 0:
                    return False
                raise BrokerSyncLate(
                    f"genfl-broker-sync has not installed the broker files in {self.outbox} within {wait_s:.0f} s "
                    "(is genfl-broker-sync.path enabled? systemctl status genfl-broker-sync.path); they are "
                    "written and reach the broker at its next run"
                )
            time.sleep(0.1)
        receipt = self.receipt()
        return receipt is not None and receipt[1]


_OUTBOX_LIMIT = 64 * 1024 * 1024  # far above a fleet's files (about 200 bytes a device)
_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def install_outbox(outbox: Path, broker_dir: Path, fleet: str) -> bool:
    """As root (the `genfl-broker-sync` unit): install the files a server left in ``outbox`` into ``broker_dir``,
    reload the broker (its pid file, no other command) and leave a receipt in the outbox; False if no broker runs.
    Every argument comes from the root-owned unit, never from the server's state, which its user may rewrite.
    The outbox is opened one folder at a time without following a link, so that the server's user cannot point
    a read or the receipt elsewhere. Copies until the outbox holds still, so that a write during the copy is not
    lost; one written after it is written again by the server, which sees the receipt lag."""
    folder = _open_folder(outbox)
    try:
        broker = BrokerFiles(broker_dir, fleet)
        installed: tuple[bytes, bytes] | None = None
        for _ in range(10):
            files = read_outbox(outbox, fleet, folder=folder)
            if files == installed:
                break
            broker.install(*files)
            installed = files
        assert installed is not None
        reloaded = broker.reload()
        _write_receipt(folder, f"{outbox_digest(*installed)} {'reloaded' if reloaded else 'no-broker'}\n")
    finally:
        os.close(folder)
    return reloaded


def read_outbox(outbox: Path, fleet: str, *, folder: int | None = None) -> tuple[bytes, bytes]:
    """The password file and ACL a server left in ``outbox`` (or the open folder ``folder``), checked before root
    installs them: plain files (no links), ``user:$7$...`` lines, and ACL lines that only name users and topics
    of ``fleet``'s tree."""
    passwd, acl = (_read_plain(outbox / name, folder) for name in ("passwd", "acl"))
    for name, data in (("passwd", passwd), ("acl", acl)):  # Mosquitto splits lines on \n alone
        if re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", data) or not data.isascii():
            raise GenflError(f"{outbox / name}: control or non-ASCII characters; not installing it")
    for number, line in enumerate(passwd.decode().split("\n"), 1):
        if not line:
            continue
        user, _, hashed = line.partition(":")
        if not _LOGIN.fullmatch(user) or not re.fullmatch(r"\$7\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", hashed):
            raise GenflError(f"{outbox / 'passwd'} line {number}: not a user:$7$ hash line; not installing it")
    root = Topics(fleet).root
    for number, line in enumerate(acl.decode().split("\n"), 1):
        words = line.split()
        good = (
            not words
            or line.startswith("#")
            or (len(words) == 2 and words[0] == "user" and _LOGIN.fullmatch(words[1]) is not None)
            or (len(words) == 3 and words[0] == "topic" and words[1] in ("read", "write", "readwrite")
                and (words[2] == f"{root}/#" or words[2].startswith(f"{root}/")))
        )  # fmt: skip
        if not good:
            raise GenflError(f"{outbox / 'acl'} line {number}: not a rule of fleet {fleet}'s ACL; not installing it")
    return passwd, acl


def _open_folder(path: Path) -> int:
    """A descriptor of the folder ``path`` (absolute), opened component by component without following links."""
    if not path.is_absolute():
        raise GenflError(f"{path}: the outbox must be an absolute path")
    descriptor = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in path.parts[1:]:
            if part in (".", ".."):
                raise GenflError(f"{path}: no . or .. in the outbox's path")
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor)
            except OSError as exc:
                raise GenflError(
                    f"cannot open {path} ({part}: {exc.strerror or exc}); it must be a folder that is not and "
                    "does not lie under a link"
                ) from exc
            os.close(descriptor)
            descriptor = child
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _write_receipt(folder: int, text: str) -> None:
    """Write the receipt into the open folder: a new file (never a link's target), owned by the folder's owner,
    renamed in."""
    temporary = f".{RECEIPT}.{secrets.token_hex(6)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
    try:
        with os.fdopen(descriptor, "wb") as file:
            if os.geteuid() == 0:
                info = os.fstat(folder)
                os.fchown(file.fileno(), info.st_uid, info.st_gid)
            file.write(text.encode())
        os.rename(temporary, RECEIPT, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise


def _read_plain(path: Path, folder: int | None = None) -> bytes:
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        descriptor = os.open(path.name, flags, dir_fd=folder) if folder is not None else os.open(path, flags)
    except OSError as exc:
        raise GenflError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > _OUTBOX_LIMIT:
            raise GenflError(f"{path}: not a plain file of at most {_OUTBOX_LIMIT >> 20} MiB; not installing it")
        return file.read(_OUTBOX_LIMIT + 1)

"""What a Mosquitto broker needs for a secured fleet: config, password file, ACL.

The password file uses Mosquitto 2's ``$7$`` format (PBKDF2-HMAC-SHA512,
101 iterations, 12-byte salt, base64), which ``mosquitto_passwd`` writes too.
The ACL confines each device to its own subtree, and to the direction each
channel goes; the enrollment user may only write its request and read its
reply, under a topic named after its MQTT client id (``%c``)::

    user genfl-server
    topic readwrite genfl/<fleet>/#
    user <device>
    topic write genfl/<fleet>/devices/<device>/state      (and update, blob/req)
    topic read  genfl/<fleet>/devices/<device>/task       (and ack, blob/chunk)
    pattern write genfl/<fleet>/enroll/%c/request
    pattern read  genfl/<fleet>/enroll/%c/reply

Mosquitto re-reads both files on SIGHUP and re-checks every connected client
against them, so a revoked device is disconnected at the reload and cannot
connect again. Mosquitto refuses ``%c``/``%u`` substitution for client ids
and user names holding ``+`` or ``#`` (CVE-2017-7650), so the enrollment
pattern cannot be widened by a crafted client id.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from protocol import ENROLL_USER, ConfigError, GenflError, Topics, write_secret

__all__ = [
    "ENROLL_USER",
    "SERVER_USER",
    "BrokerFiles",
    "mosquitto_password_hash",
    "render_acl",
    "render_mosquitto_conf",
    "render_password_file",
]

SERVER_USER = "genfl-server"
_ITERATIONS = 101


def mosquitto_password_hash(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def render_password_file(users: list[tuple[str, str]]) -> str:
    return "".join(f"{user}:{hashed}\n" for user, hashed in users)


def render_acl(fleet: str, devices: list[str]) -> str:
    topics = Topics(fleet)
    lines = [
        f"# genfl-edge fleet {fleet}: written by genfl-server; edits are overwritten at the next enrollment.",
        f"user {SERVER_USER}",
        f"topic readwrite {topics.root}/#",
        "",
    ]
    for device in devices:
        lines.append(f"user {device}")
        lines += [f"topic write {topics.device(device, c)}" for c in ("state", "update", "blob/req")]  # type: ignore[arg-type]
        lines += [f"topic read {topics.device(device, c)}" for c in ("task", "ack", "blob/chunk")]  # type: ignore[arg-type]
        lines.append("")
    lines.append(f"user {ENROLL_USER}")
    lines.append("")
    lines.append("# every user, the enrollment user's only rights: its own request and reply, by client id")
    lines.append(f"pattern write {topics.root}/enroll/%c/request")
    lines.append(f"pattern read {topics.root}/enroll/%c/reply")
    return "\n".join(lines) + "\n"


def render_mosquitto_conf(directory: Path, port: int, *, bind: str = "", user: str = "") -> str:
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
            f"listener {port}{' ' + bind if bind else ''}",
            f"cafile {d / 'ca.crt'}",
            f"certfile {d / 'server.crt'}",
            f"keyfile {d / 'server.key'}",
            "tls_version tlsv1.2",
            "require_certificate false",
            "",
        ]
    )


@dataclass(frozen=True)
class BrokerFiles:
    """The broker directory ``broker-config`` wrote, and how to make the broker re-read it."""

    directory: Path
    fleet: str
    reload_command: tuple[str, ...] = ()  # e.g. ("systemctl", "reload", "mosquitto"); default: SIGHUP via pid file

    def write_users(self, server_password_hash: str, enroll_password_hash: str, devices: list[tuple[str, str]]) -> None:
        users = [(SERVER_USER, server_password_hash), (ENROLL_USER, enroll_password_hash), *devices]
        self._write(self.directory / "passwd", render_password_file(users).encode())
        self._write(self.directory / "acl", render_acl(self.fleet, [d for d, _ in devices]).encode())

    def _write(self, path: Path, data: bytes) -> None:
        """0600, owned by whoever owns the broker directory (the broker's user), so the broker can read it."""
        write_secret(path, data)
        if os.geteuid() == 0:
            owner = self.directory.stat()
            os.chown(path, owner.st_uid, owner.st_gid)

    def reload(self) -> bool:
        """Ask the broker to re-read its files; False if no broker runs from this directory."""
        if self.reload_command:
            try:
                subprocess.run(list(self.reload_command), check=True, capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as exc:
                raise GenflError(f"reloading the broker with {' '.join(self.reload_command)} failed: {exc}") from exc
            return True
        pid_file = self.directory / "mosquitto.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{pid_file}: not a pid ({exc})") from exc
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise GenflError(f"cannot signal the broker (pid {pid}): {exc}; set a reload command") from exc
        return True

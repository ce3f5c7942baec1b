"""Who may use a secured NATS cluster, and for what: the ``accounts.conf`` every node includes.

NATS keeps MQTT sessions per *account*, and a client id is a session's only
name within one: any login of an account that connects with another client's id
takes that client's session over (NATS has no ``use_username_as_clientid``).
So the server has an account of its own and every board and enrollment login
shares the other::

    accounts {
      SERVER:  genfl-server            imports what the boards send, exports what it sends them
      DEVICES: <device> ...            each only inside its own topics, as the Mosquitto ACL says
               enroll-<12 hex> ...     its own request and reply, nothing else
    }

A board's login that claims the server's client id opens a session in DEVICES,
which the server's session (in SERVER) never meets. Messages cross between the
accounts by stream exports and imports, one per direction of each channel, for
the subject itself (QoS 0 delivery) and for its ``$MQTT.msgs.`` copy (what NATS
stores for QoS 1 subscribers: without it a QoS 1 message would not cross).
Retained messages do not cross accounts in NATS 2.9: the server learns of a
board from its state messages, which boards repeat every minute (``genfl-edge``'s
``state_refresh``).

Within DEVICES a board may still claim another board's client id: the broker
then disconnects the other board, but the permissions are the claimant's own,
so it receives none of the other's messages; see docs/security.md.

Passwords are bcrypt hashes (``nats-server`` reads no other hash). Every login's
password is 144 random bits, so the hash's work factor guards nothing a guess
could reach; a low one keeps each connection cheap for the broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from protocol import ConfigError, GenflError, Topics, atomic_write

__all__ = ["ACCOUNTS_FILE", "ClusterUsers", "nats_password_hash", "nats_subject_root", "render_accounts"]

ACCOUNTS_FILE = "accounts.conf"
SERVER_ACCOUNT = "SERVER"
DEVICES_ACCOUNT = "DEVICES"
_BCRYPT_ROUNDS = 6
# What NATS itself needs a login to subscribe to: the delivery subjects of its QoS 1 subscriptions. (NATS refuses
# an MQTT subscription to them, so nobody reads another client's deliveries through it.)
_QOS1_DELIVERY = "$MQTT.sub.>"
_UP = ("state", "update", "blob.req")  # what a board sends (its state it also reads: it answers a late will)
_DOWN = ("task", "ack", "blob.chunk")  # what the server sends it


def nats_password_hash(password: str) -> str:
    import bcrypt  # the server's extra; a board never hashes

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=_BCRYPT_ROUNDS)).decode()


def nats_subject_root(fleet: str) -> str:
    """``genfl.<fleet>``: the subject of the fleet's topic root on NATS; ConfigError for a name NATS cannot carry."""
    Topics(fleet)
    if "." in fleet:
        raise ConfigError(
            f"fleet {fleet!r}: a fleet on the cluster has no '.' in its name (NATS splits subjects at '.')"
        )
    return f"genfl.{fleet}"


def _user(name: str, password_hash: str, publish: list[str] | None = None, subscribe: list[str] | None = None) -> str:
    entry: dict[str, object] = {"user": name, "password": password_hash}
    if publish is not None and subscribe is not None:
        entry["permissions"] = {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
    return json.dumps(entry)  # NATS config is a superset of JSON: quoting is JSON's


def _streams(subjects: list[str]) -> list[str]:
    """Each subject and its QoS 1 store copy."""
    return [form for subject in subjects for form in (subject, f"$MQTT.msgs.{subject}")]


def _exchange(kind: str, subjects: list[str], other: str) -> str:
    if kind == "exports":
        items = [json.dumps({"stream": subject}) for subject in _streams(subjects)]
    else:
        items = [json.dumps({"stream": {"account": other, "subject": subject}}) for subject in _streams(subjects)]
    return f"    {kind}: [\n" + "".join(f"      {item}\n" for item in items) + "    ]\n"


def render_accounts(
    fleet: str,
    server_hash: str,
    devices: list[tuple[str, str]],
    enroll_users: list[tuple[str, str]],
    revoked: Sequence[str] = (),
) -> str:
    """The accounts file. A revoked device keeps its user and permissions under a password nobody knows (a hash of
    fresh random bytes): the node disconnects it and refuses its login, and its retained state stays the message
    of a known user. Removing the user instead makes a nats-server without the fix of nats-io/nats-server#7596
    (December 2025; Debian 12 ships 2.9.10) panic on reload on every node that holds a replica of that retained
    message, which takes the cluster down at the first revocation."""
    root = nats_subject_root(fleet)
    up = [f"{root}.devices.*.{channel}" for channel in _UP] + [f"{root}.enroll.*.request"]
    down = [f"{root}.devices.*.{channel}" for channel in _DOWN] + [f"{root}.enroll.*.reply"]
    users = []
    active = {device for device, _ in devices}
    locked = [(device, nats_password_hash(secrets.token_urlsafe(32))) for device in sorted(set(revoked) - active)]
    for device, hashed in sorted(devices + locked):
        if "." in device:
            continue  # NATS splits subjects at '.': such a board cannot use the cluster (FleetSecurity warns)
        own = f"{root}.devices.{device}"
        users.append(_user(device, hashed, [f"{own}.{c}" for c in _UP],
                           [f"{own}.state", *(f"{own}.{c}" for c in _DOWN), _QOS1_DELIVERY]))  # fmt: skip
    for login, hashed in enroll_users:  # enroll-<12 hex>: never a '.'
        mine = f"{root}.enroll.{login}"
        users.append(_user(login, hashed, [f"{mine}.request"], [f"{mine}.reply", _QOS1_DELIVERY]))
    device_users = "".join(f"      {user}\n" for user in users)
    return (
        f"# genfl fleet {fleet}: written by genfl-server; edits are overwritten at the next enrollment.\n"
        "accounts {\n"
        f"  {SERVER_ACCOUNT}: {{\n"
        "    jetstream: enabled\n"
        f"    users: [\n      {_user('genfl-server', server_hash)}\n    ]\n"
        + _exchange("exports", down, DEVICES_ACCOUNT)
        + _exchange("imports", up, DEVICES_ACCOUNT)
        + "  }\n"
        f"  {DEVICES_ACCOUNT}: {{\n"
        "    jetstream: enabled\n"
        f"    users: [\n{device_users}    ]\n"
        + _exchange("exports", up, SERVER_ACCOUNT)
        + _exchange("imports", down, SERVER_ACCOUNT)
        + "  }\n"
        "}\n"
    )


_USER_LINE = re.compile(r'^\s*\{"user": "([^"]+)"', re.MULTILINE)


@dataclass
class ClusterUsers:
    """The cluster folder ``cluster-config`` wrote, and how to make its nodes re-read ``accounts.conf``.

    The same duties as :class:`~cloud_server.broker._broker_files.BrokerFiles` for Mosquitto. Nodes on this
    machine are reloaded through their pid files (``nN.pid``); nodes on other hosts through ``reload_command``
    (which also carries the file there, e.g. an Ansible or ssh command)."""

    directory: Path
    fleet: str
    reload_command: tuple[str, ...] = ()
    outbox: Path | None = None  # the cluster has no sync unit: the server writes the folder itself
    handed_off: ClassVar[bool] = False

    kind: ClassVar[Literal["nats"]] = "nats"

    @staticmethod
    def password_hash(password: str) -> str:
        return nats_password_hash(password)

    def write_users(
        self,
        server_password_hash: str,
        devices: list[tuple[str, str]],
        enroll_users: list[tuple[str, str]],
        revoked: Sequence[str] = (),
    ) -> None:
        text = render_accounts(self.fleet, server_password_hash, devices, enroll_users, revoked)
        path = self.directory / ACCOUNTS_FILE
        owner = None
        if os.geteuid() == 0:
            info = os.stat(self.directory)
            owner = (info.st_uid, info.st_gid)
        try:
            atomic_write(path, text.encode(), mode=0o600, owner=owner)
        except OSError as exc:
            raise GenflError(f"cannot write the cluster's {path}: {exc.strerror or exc}") from exc

    def logins(self, prefix: str) -> set[str]:
        try:
            text = (self.directory / ACCOUNTS_FILE).read_text()
        except (OSError, UnicodeDecodeError):
            return set()
        return {name for name in _USER_LINE.findall(text) if name.startswith(prefix)}

    def synced(self) -> bool:
        return True

    def follow_up(self) -> bool:
        return False

    def lagging_s(self) -> float:
        return 0.0

    def node_pids(self) -> list[int]:
        """The running ``nats-server`` of each ``nN.pid`` in the folder (owned by the folder's owner or root: the
        pid file is the broker user's to write, and we must not signal whatever it names)."""
        pids = []
        for pid_file in sorted(self.directory.glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                proc = Path(f"/proc/{pid}")
                if (
                    pid > 1
                    and (proc / "comm").read_text().strip() == "nats-server"
                    and proc.stat().st_uid
                    in (
                        os.stat(self.directory).st_uid,
                        0,
                    )
                ):
                    pids.append(pid)
        return pids

    def reload(self, wait_s: float = 0.0) -> bool:
        """Have every node re-read ``accounts.conf``; False if none runs from this folder. A node that re-reads it
        disconnects the logins it no longer has (a revoked board, a used token's login)."""
        if self.reload_command:
            try:
                subprocess.run(list(self.reload_command), check=True, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as exc:
                raise GenflError(f"reloading the cluster with {' '.join(self.reload_command)} failed: {exc}") from exc
            return True
        reloaded = False
        for pid in self.node_pids():
            try:
                os.kill(pid, signal.SIGHUP)
                reloaded = True
            except ProcessLookupError:
                continue
            except PermissionError as exc:
                raise GenflError(f"cannot signal the NATS node (pid {pid}): {exc}; set a reload command") from exc
        return reloaded

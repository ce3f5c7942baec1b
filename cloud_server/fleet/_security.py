"""A secured fleet's server side: keys, broker files, the device registry, enrollment.

``genfl-server broker-config`` creates it; ``serve`` and ``devices`` find it in
the state directory. Every secret lives there, owner-only::

    STATE_DIR/security/                 mode 0700
        signing.key                     Ed25519: signs tasks, acks and chunks (0600)
        ca.key  ca.crt                  the fleet CA (the key 0600)
        server.password                 the server's broker password (0600)
        registry.sqlite3                devices, public keys, token hashes, enrollment logins (0600)
        broker.json                     fleet, broker URL, broker directory, reload command, size limit

A state dir without ``security/`` is an open fleet (anonymous broker, no
signatures): the demo. With it, the server signs everything it sends and
accepts only frames signed by an enrolled, unrevoked device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pwd
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from protocol import (
    BrokerAddress,
    ConfigError,
    EnrollmentToken,
    EnrollReply,
    EnrollRequest,
    GenflError,
    ProtocolError,
    SignedGuard,
    Topics,
    enroll_topic,
    generate_signing_key,
    load_signing_key,
    public_key_text,
    save_signing_key,
    write_secret,
)

from ..broker._broker_files import SYNC_WAIT_S, BrokerFiles, BrokerSyncLate, render_mosquitto_conf, write_owned
from ..broker._cluster import ClusterFiles, ClusterSpec, NodeAddress, NodeSecurity, write_cluster_config
from ..broker._cluster_users import ACCOUNTS_FILE, ClusterUsers, nats_subject_root
from ..rounds._limits import DEFAULT_MAX_PACKET_SIZE
from ._pki import CertificateAuthority, issue_server_certificate, load_ca, new_ca
from ._registry import ENROLL_USER_PREFIX, DeviceRegistry, EnrollmentRefused, Revoked

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "OUTBOX",
    "BrokerSetup",
    "Enroller",
    "FleetSecurity",
    "use_outbox",
    "write_broker_config",
    "write_cluster_setup",
]


log = logging.getLogger("genfl.security")


@dataclass(frozen=True)
class BrokerSetup:
    directory: Path
    url: str
    ca_file: Path


def _security_dir(state_dir: Path) -> Path:
    return state_dir / "security"


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _fleet_keys(security: Path, fleet: str, ca_cert: Path | None, ca_key: Path | None) -> CertificateAuthority:
    """The fleet's CA (the operator's, the one made before, or a new one), signing key and server password, made
    once and kept in ``security``."""
    if (ca_cert is None) != (ca_key is None):
        raise ConfigError("give both --ca-cert and --ca-key, or neither")
    if ca_cert is not None and ca_key is not None:
        ca = load_ca(ca_cert, ca_key)
    elif (security / "ca.key").exists():
        ca = load_ca(security / "ca.crt", security / "ca.key")
    else:
        ca = new_ca(fleet)
    write_secret(security / "ca.key", ca.key_pem())
    (security / "ca.crt").write_bytes(ca.certificate_pem())
    if not (security / "signing.key").exists():
        save_signing_key(security / "signing.key", generate_signing_key())
    if not (security / "server.password").exists():
        write_secret(security / "server.password", secrets.token_urlsafe(24).encode())
    return ca


def _prepare_fleet(
    state_dir: Path, fleet: str, ca_cert: Path | None, ca_key: Path | None
) -> tuple[Path, CertificateAuthority, dict[str, object]]:
    """The security folder (made owner-only), the fleet CA and the settings ``broker.json`` holds now (empty on
    a new fleet); ConfigError if the folder is set up for another fleet."""
    Topics(fleet)
    security = _security_dir(state_dir)
    security.mkdir(parents=True, exist_ok=True)
    os.chmod(security, 0o700)
    existing = security / "broker.json"
    settings: dict[str, object] = {}
    if existing.exists():
        try:
            settings = json.loads(existing.read_text())
            known = settings.get("fleet")
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{existing}: unreadable ({exc}); move it away to start the fleet's setup again") from exc
        if known != fleet:
            raise ConfigError(f"{state_dir} is set up for fleet {known!r}, not {fleet!r}")
    return security, _fleet_keys(security, fleet, ca_cert, ca_key), settings


def _broker_account(broker_user: str | None) -> tuple[str, tuple[int, int] | None]:
    """The user the broker runs as, and (uid, gid) to give its files when we are root (else None)."""
    user = broker_user or pwd.getpwuid(os.geteuid()).pw_name
    try:
        account = pwd.getpwnam(user)
    except KeyError as exc:
        raise ConfigError(f"no user {user!r} on this machine to run the broker as") from exc
    return user, ((account.pw_uid, account.pw_gid) if os.geteuid() == 0 else None)


def _save_settings(state_dir: Path, settings: dict[str, object]) -> None:
    """Write ``broker.json`` and the broker's logins as the registry has them."""
    path = _security_dir(state_dir) / "broker.json"
    write_owned(path, (json.dumps(settings, indent=2) + "\n").encode(), mode=0o600)
    security_state = FleetSecurity.load(state_dir)
    assert security_state is not None
    try:
        security_state.write_broker_files()
    finally:
        security_state.close()


def write_broker_config(
    state_dir: Path,
    out: Path,
    *,
    fleet: str,
    host: str,
    port: int = 8883,
    bind: str = "",
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    reload_command: tuple[str, ...] = (),
    broker_user: str | None = None,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
) -> BrokerSetup:
    """Create (or reuse) the fleet's keys in ``state_dir`` and write a Mosquitto setup to ``out``."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"bad port {port}")
    if not 64 * 1024 <= max_packet_size <= 256 * 1024 * 1024:
        raise ConfigError(f"the maximum packet size must be 64 KiB..256 MiB, got {max_packet_size}")
    _security, ca, known = _prepare_fleet(state_dir, fleet, ca_cert, ca_key)
    server = issue_server_certificate(ca, host)
    user, broker_owner = _broker_account(broker_user)
    out.mkdir(parents=True, exist_ok=True)
    # The broker reads its key, passwd and acl as its own user; the server (root) keeps writing them at
    # enrollments. Every file is written with its owner and mode set before it appears under its name.
    if broker_owner is not None:
        os.chown(out, *broker_owner, follow_symlinks=False)
    write_owned(out / "ca.crt", ca.certificate_pem(), mode=0o644)
    write_owned(out / "server.crt", server.certificate_pem(), mode=0o644)
    write_owned(out / "server.key", server.key_pem(), mode=0o600, owner=broker_owner)
    conf = render_mosquitto_conf(out, port, bind=bind, user=user, max_packet_size=max_packet_size)
    write_owned(out / "mosquitto.conf", conf.encode(), mode=0o644)
    url = BrokerAddress(host, port, tls=True).url()
    settings = {"fleet": fleet, "url": url, "broker_dir": str(out.resolve()), "reload_command": list(reload_command),
                "max_packet_size": max_packet_size}  # fmt: skip
    if known.get("outbox") and known.get("broker", "mosquitto") == "mosquitto":
        settings["outbox"] = OUTBOX  # set up by install-service: a new certificate does not undo it
    _save_settings(state_dir, settings)
    return BrokerSetup(out, url, out / "ca.crt")


def write_cluster_setup(
    state_dir: Path,
    spec: ClusterSpec,
    out: Path,
    *,
    fleet: str,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    reload_command: tuple[str, ...] = (),
    broker_user: str | None = None,
    store_root: Path | None = None,
) -> ClusterFiles:
    """Create (or reuse) the fleet's keys in ``state_dir`` and write a secured NATS cluster to ``out``: a certificate
    from the fleet CA for every node (server and client use: routes are mutual TLS), the accounts file from the
    registry, and ``broker.json`` naming the cluster, so that ``serve``, enrollment and revocation use it."""
    nats_subject_root(fleet)
    _security, ca, _known = _prepare_fleet(state_dir, fleet, ca_cert, ca_key)
    user, broker_owner = _broker_account(broker_user)
    out.mkdir(parents=True, exist_ok=True)
    if broker_owner is not None:
        os.chown(out, *broker_owner, follow_symlinks=False)
    directory = out.resolve()
    write_owned(out / "ca.crt", ca.certificate_pem(), mode=0o644)
    for node in spec.addresses():
        certificate = issue_server_certificate(ca, node.host, client_auth=True)
        write_owned(out / f"{node.name}.crt", certificate.certificate_pem(), mode=0o644)
        write_owned(out / f"{node.name}.key", certificate.key_pem(), mode=0o600, owner=broker_owner)

    def node_files(node: NodeAddress) -> NodeSecurity:
        return NodeSecurity(directory / f"{node.name}.crt", directory / f"{node.name}.key", directory / "ca.crt",
                            directory / ACCOUNTS_FILE, directory / f"{node.name}.pid")  # fmt: skip

    files = write_cluster_config(spec, out, store_root=store_root, security=node_files,
                                 user=user if broker_owner is not None else None)  # fmt: skip
    settings = {"fleet": fleet, "url": files.brokers, "broker": "nats", "broker_dir": str(directory),
                "reload_command": list(reload_command), "max_packet_size": spec.payload_limit}  # fmt: skip
    _save_settings(state_dir, settings)
    return files


OUTBOX = "broker-outbox"  # in the security folder: where a server that may not write the broker's folder puts its files


def use_outbox(state_dir: Path) -> tuple[Path, str]:
    """From now on the server writes the broker's files into its own state (its hardened unit may not write the
    broker's folder), for the root `genfl-broker-sync` unit to install; returns the file that unit watches and the
    fleet (read as root at install time, before the server's user holds the state)."""
    path = _security_dir(state_dir) / "broker.json"
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{state_dir} holds no secured fleet yet: run genfl-server broker-config --state-dir {state_dir} first"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(settings, dict) or not isinstance(settings.get("fleet"), str):
        raise ConfigError(f"{path}: not a broker-config settings file (no fleet)")
    settings["outbox"] = OUTBOX
    info = path.stat()  # the server's user may own it already (systemd hands it the state): keep it so
    write_owned(path, (json.dumps(settings, indent=2) + "\n").encode(), mode=0o600,
                owner=(info.st_uid, info.st_gid) if os.geteuid() == 0 else None)  # fmt: skip
    security = FleetSecurity(state_dir)
    try:
        security.write_broker_files()  # the outbox starts full, so that the server reads its logins from it
    finally:
        security.close()
    return _security_dir(state_dir) / OUTBOX / "acl", str(settings["fleet"])


class FleetSecurity:
    def __init__(self, state_dir: Path) -> None:
        self.dir = _security_dir(state_dir)
        try:
            settings = json.loads((self.dir / "broker.json").read_text())
            self.fleet: str = settings["fleet"]
            self.url: str = settings["url"]
            broker_dir = Path(settings["broker_dir"])
            reload_command = tuple(settings.get("reload_command", ()))
            outbox = self.dir / str(settings["outbox"]) if settings.get("outbox") else None
            self.max_packet_size = int(settings.get("max_packet_size", DEFAULT_MAX_PACKET_SIZE))
            kind = settings.get("broker", "mosquitto")
            if kind not in ("mosquitto", "nats"):
                raise ValueError(f"unknown broker kind {kind!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.dir / 'broker.json'}: unreadable ({exc}); run genfl-server broker-config"
            ) from exc
        self.broker_files: BrokerFiles | ClusterUsers = (
            ClusterUsers(broker_dir, self.fleet, reload_command)
            if kind == "nats"
            else BrokerFiles(broker_dir, self.fleet, reload_command, outbox=outbox)
        )
        self._warned: set[str] = set()  # devices already told about that cannot use this broker
        self.ca_file = self.dir / "ca.crt"
        self.signing_key = load_signing_key(self.dir / "signing.key")
        self.server_password = _read_secret(self.dir / "server.password")
        self.registry = DeviceRegistry(self.dir / "registry.sqlite3")

    @classmethod
    def load(cls, state_dir: Path) -> FleetSecurity | None:
        """The fleet's security state, or None for an open fleet (no ``broker-config`` ran)."""
        if not (_security_dir(state_dir) / "broker.json").exists():
            return None
        return cls(state_dir)

    def close(self) -> None:
        self.registry.close()

    @property
    def public_key(self) -> str:
        return public_key_text(self.signing_key)

    def guard(self) -> SignedGuard:
        return SignedGuard(self.fleet, self.signing_key, self.registry.public_key)

    def new_token(self, name: str, ttl_s: float, *, readmit: bool = False) -> tuple[str, str]:
        """A token for a device to be called ``name`` (a revoked one's with ``readmit``), and a note if the broker
        has not taken its login yet (see :meth:`sync_broker`)."""
        token = self.registry.add_token(name, ttl_s, readmit=readmit)
        note = self.sync_broker()  # the token's own login exists from now until it is used or expires
        return EnrollmentToken(self.fleet, token.enroll_user, token.enroll_password, token.secret).text(), note

    def enroll_directly(self, name: str, public_key: str) -> str:
        """Enroll ``name`` with ``public_key`` without a board's request (``simulate`` on a signed fleet), replacing
        a device of that name; its broker password. The broker takes the login at the next :meth:`sync_broker`."""
        if any(entry.device_id == name and entry.revoked is None for entry in self.registry.devices()):
            self.registry.revoke(name)
        token = self.registry.add_token(name, 600.0, readmit=True)
        return self.registry.redeem(token.secret, public_key).broker_password

    def write_broker_files(self, *, keep_logins: Collection[str] = ()) -> None:
        """The password file and ACL as the registry says now (the server, devices, pending tokens' logins, and
        the used tokens' logins ``keep_logins`` until their boards have heard that they are enrolled)."""
        files = self.broker_files
        logins = self.registry.enrollment_users(keep=keep_logins, broker=files.kind)
        devices = self.registry.broker_users(files.kind)
        revoked = sorted(d for d in self.registry.revoked_ids() if "." not in d)
        files.write_users(files.password_hash(self.server_password), devices, logins, revoked)
        if files.kind == "nats":
            self._warn_left_out([d for d, _ in devices if "." in d], "NATS subjects have no '.' in a name")
            self._warn_left_out(self.registry.without_login("nats"), "enrolled before the fleet kept cluster logins")

    def _warn_left_out(self, devices: list[str], why: str) -> None:
        new = [device for device in devices if device not in self._warned]
        if new:
            self._warned.update(new)
            log.warning("devices %s have no login on the cluster (%s): re-enroll them under another name "
                        "(devices revoke NAME, then devices add NAME2)", ", ".join(new), why)  # fmt: skip

    def sync_broker(self, *, wait_s: float = SYNC_WAIT_S) -> str:
        """Rewrite the password file and ACL from the registry and have the broker re-read them; "" when it did,
        else a one-line note saying why not (yet). Waits up to ``wait_s`` for the sync unit when the files are
        its to install."""
        self.write_broker_files()
        try:
            if self.broker_files.reload(wait_s):
                return ""
        except BrokerSyncLate as exc:
            return str(exc)
        if self.broker_files.handed_off and not self.broker_files.synced():
            return "left for genfl-broker-sync to install"
        return "no running broker was found to reload; it reads the new files when it starts"

    def expire_logins(self, keep: Collection[str] = ()) -> bool:
        """Take the logins of tokens that expired (or were used; but ``keep``) out of the broker; True if it synced.

        Compares the enrollment logins in the broker's password file with the pending tokens, so that it
        also catches what another process (``devices add``) or a restart left behind."""
        current = {login for login, _ in self.registry.enrollment_users(keep=keep)}
        if self.broker_files.logins(ENROLL_USER_PREFIX) <= current:
            return False
        self.write_broker_files(keep_logins=keep)
        with contextlib.suppress(BrokerSyncLate):  # in a message loop: the tick follows a handed-off change up
            self.broker_files.reload(0)
        return True

    def revoke(self, device_id: str) -> tuple[Revoked, str]:
        """Revoke in the registry (the coordinator stops accepting at once) and at the broker (the device's
        login and those of its pending tokens go); what was done, and a note if the broker has not taken it."""
        done = self.registry.revoke(device_id)
        return done, self.sync_broker()


ENROLL_SYNC_WAIT_S = 5.0  # how long an enrollment waits for genfl-broker-sync before it replies anyway
SYNC_LATE_WARN_S = 60.0


CLUSTER_REPLY_GRACE_S = 15.0  # a used token's login stays this long on a cluster, its reply crossing nodes


class Enroller:
    """Serves ``genfl/<fleet>/enroll/+/request`` inside ``genfl-server serve``.

    A redemption is all or nothing: the device is added and the token marked used in one registry
    transaction that commits only after the broker files (with the device) were written. If they cannot be
    (a read-only broker directory, a full disk), the board is told to try again later and its token stays
    good. The broker takes the device's login before the reply goes out (so that the board's first login
    works), and drops the used token's login only once the reply is at the broker (a reload disconnects a
    login that is gone, and the board would miss the reply).
    """

    def __init__(
        self,
        security: FleetSecurity,
        publish: Callable[[str, bytes], None],
        flush: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        classes: tuple[str, ...] = (),
    ) -> None:
        self.security = security
        self.classes = classes  # the fleet's class list, told to every board it enrolls
        self.topics = Topics(security.fleet)
        self._publish = publish
        self._flush = flush  # wait until the broker has what we published (before a reload may drop the board)
        self._clock = clock
        self._expiry_checked = clock()
        self._lingering: dict[str, float] = {}  # used tokens' logins kept until then (a cluster's reply in flight)
        self._warned_late = False
        self._followed_up = -math.inf

    def tick(self) -> None:
        """Once a second, follow a handed-off change up until genfl-broker-sync installed it; every few seconds,
        take the logins of tokens that expired out of the broker."""
        if self._clock() - self._followed_up >= 1.0:  # (it reads the outbox and the receipt: not every loop)
            self._followed_up = self._clock()
            self._follow_up_sync()
        expired = [login for login, until in self._lingering.items() if self._clock() >= until]
        if expired:
            for login in expired:
                del self._lingering[login]
            self._drop_used_logins(", ".join(expired))
        if self._clock() - self._expiry_checked < 5.0:
            return
        self._expiry_checked = self._clock()
        try:
            if self.security.expire_logins(keep=set(self._lingering)):
                log.info("removed the broker logins of expired enrollment tokens")
        except GenflError as exc:
            log.error("could not remove expired enrollment logins: %s", exc)

    def _follow_up_sync(self) -> None:
        files = self.security.broker_files
        if files.follow_up() and files.lagging_s() > SYNC_LATE_WARN_S and not self._warned_late:
            self._warned_late = True
            log.warning("genfl-broker-sync has not installed the broker files in %s for %.0f s: is "
                        "genfl-broker-sync.path enabled? (systemctl status genfl-broker-sync.path)",
                        files.outbox, files.lagging_s())  # fmt: skip
        elif self._warned_late and files.synced():
            self._warned_late = False
            log.info("genfl-broker-sync has installed the broker files")

    @property
    def subscription(self) -> str:
        return enroll_topic(self.topics, "+", "request")

    def handles(self, topic: str) -> bool:
        return topic.startswith(f"{self.topics.root}/enroll/")

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 5 or parts[4] != "request" or not parts[3]:
            raise ProtocolError("unknown-topic", topic[:200])
        client_id = parts[3]  # the broker makes it the enrollment login (use_username_as_clientid)
        request = EnrollRequest.decode(payload)
        enrolled = None
        try:
            enrolled = self.security.registry.redeem(
                request.secret,
                request.public_key,
                enroll_user=client_id,
                before_commit=lambda: self.security.write_broker_files(keep_logins={client_id, *self._lingering}),
            )
        except (EnrollmentRefused, ConfigError) as exc:
            log.warning("enrollment refused for client %s: %s", client_id[:64], exc)
            reply = EnrollReply(ok=False, reason=str(exc))
        except (GenflError, OSError) as exc:  # the broker files: nothing was committed, the token stays good
            log.error("enrollment of client %s rolled back: %s", client_id[:64], exc)
            with contextlib.suppress(GenflError, OSError):  # undo a password file written before the ACL failed
                self.security.write_broker_files()
            reply = EnrollReply(ok=False, reason="the server cannot enroll boards right now (its broker files "
                                "cannot be written); the token is still good, try again later")  # fmt: skip
        else:
            log.info("device %s enrolled", enrolled.device_id)
            reply = EnrollReply(
                ok=True,
                device_id=enrolled.device_id,
                fleet=self.security.fleet,
                username=enrolled.device_id,
                password=enrolled.broker_password,
                server_public_key=self.security.public_key,
                classes=",".join(self.classes),
            )
        if enrolled is not None:  # its login at the broker before the board hears it may use it
            self._settle_broker(enrolled.device_id, ENROLL_SYNC_WAIT_S)
        self._publish(enroll_topic(self.topics, client_id, "reply"), reply.signed(request.secret, client_id).encode())
        if enrolled is None:
            return
        self._flush()  # the reply is at the broker before the reload drops the used token's login
        if self.security.broker_files.kind == "nats":
            # On a cluster "at the broker" is the server's node: the reply still crosses a route and an account to
            # the board's node, and a reload that drops the login first cuts the board off before it arrives.
            self._lingering[client_id] = self._clock() + CLUSTER_REPLY_GRACE_S
            return
        self._drop_used_logins(enrolled.device_id)

    def _drop_used_logins(self, device_id: str) -> None:
        try:
            self.security.write_broker_files(keep_logins=set(self._lingering))
        except (GenflError, OSError) as exc:
            log.error("device %s enrolled but its used token's login is still in the broker files: %s",
                      device_id, exc)  # fmt: skip
            return
        self._settle_broker(device_id, 0.0)

    def _settle_broker(self, device_id: str, wait_s: float) -> None:
        try:
            self.security.broker_files.reload(wait_s)
        except BrokerSyncLate as exc:
            log.warning("device %s enrolled, its login not at the broker yet (the board retries): %s", device_id, exc)
        except GenflError as exc:
            log.error("device %s enrolled but the broker was not reloaded: %s", device_id, exc)

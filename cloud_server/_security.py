"""A secured fleet's server side: keys, broker files, the device registry, enrollment.

``genfl-server broker-config`` creates it; ``serve`` and ``devices`` find it in
the state directory. Every secret lives there, owner-only::

    STATE_DIR/security/                 mode 0700
        signing.key                     Ed25519: signs tasks, acks and chunks (0600)
        ca.key  ca.crt                  the fleet CA (the key 0600)
        server.password                 the server's broker password (0600)
        enroll.password                 the enrollment user's password (0600)
        registry.sqlite3                devices, public keys, token hashes (0600)
        broker.json                     fleet, broker URL, broker directory, reload command

A state dir without ``security/`` is an open fleet (anonymous broker, no
signatures): the demo. With it, the server signs everything it sends and
accepts only frames signed by an enrolled, unrevoked device.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import secrets
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

from ._broker_files import BrokerFiles, mosquitto_password_hash, render_mosquitto_conf
from ._pki import issue_server_certificate, load_ca, new_ca
from ._registry import DeviceRegistry, EnrollmentRefused

__all__ = ["BrokerSetup", "Enroller", "FleetSecurity", "write_broker_config"]

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
) -> BrokerSetup:
    """Create (or reuse) the fleet's keys in ``state_dir`` and write a Mosquitto setup to ``out``."""
    Topics(fleet)
    if not 1 <= port <= 65535:
        raise ConfigError(f"bad port {port}")
    security = _security_dir(state_dir)
    security.mkdir(parents=True, exist_ok=True)
    os.chmod(security, 0o700)
    existing = security / "broker.json"
    if existing.exists():
        try:
            known = json.loads(existing.read_text()).get("fleet")
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{existing}: unreadable ({exc}); move it away to start the fleet's setup again") from exc
        if known != fleet:
            raise ConfigError(f"{state_dir} is set up for fleet {known!r}, not {fleet!r}")
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
    for name in ("server.password", "enroll.password"):
        if not (security / name).exists():
            write_secret(security / name, secrets.token_urlsafe(24).encode())
    server = issue_server_certificate(ca, host)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.certificate_pem())
    (out / "server.crt").write_bytes(server.certificate_pem())
    write_secret(out / "server.key", server.key_pem())
    user = broker_user or pwd.getpwuid(os.geteuid()).pw_name
    try:
        account = pwd.getpwnam(user)
    except KeyError as exc:
        raise ConfigError(f"no user {user!r} on this machine to run the broker as") from exc
    (out / "mosquitto.conf").write_text(render_mosquitto_conf(out, port, bind=bind, user=user))
    url = BrokerAddress(host, port, tls=True).url()
    (security / "broker.json").write_text(
        json.dumps(
            {"fleet": fleet, "url": url, "broker_dir": str(out.resolve()), "reload_command": list(reload_command)},
            indent=2,
        )
        + "\n"
    )
    security_state = FleetSecurity.load(state_dir)
    assert security_state is not None
    security_state.sync_broker(reload=False)
    security_state.close()
    if os.geteuid() == 0 and account.pw_uid != 0:
        # The broker reads these as its own user; the server (root) keeps writing them at enrollments.
        for name in ("server.key", "passwd", "acl"):
            os.chown(out / name, account.pw_uid, account.pw_gid)
        os.chown(out, account.pw_uid, account.pw_gid)
    return BrokerSetup(out, url, out / "ca.crt")


class FleetSecurity:
    def __init__(self, state_dir: Path) -> None:
        self.dir = _security_dir(state_dir)
        try:
            settings = json.loads((self.dir / "broker.json").read_text())
            self.fleet: str = settings["fleet"]
            self.url: str = settings["url"]
            broker_dir = Path(settings["broker_dir"])
            reload_command = tuple(settings.get("reload_command", ()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.dir / 'broker.json'}: unreadable ({exc}); run genfl-server broker-config"
            ) from exc
        self.broker_files = BrokerFiles(broker_dir, self.fleet, reload_command)
        self.ca_file = self.dir / "ca.crt"
        self.signing_key = load_signing_key(self.dir / "signing.key")
        self.server_password = _read_secret(self.dir / "server.password")
        self.enroll_password = _read_secret(self.dir / "enroll.password")
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

    def new_token(self, name: str, ttl_s: float) -> str:
        secret = self.registry.add_token(name, ttl_s)
        return EnrollmentToken(self.fleet, self.enroll_password, secret).text()

    def sync_broker(self, *, reload: bool = True) -> bool:
        """Rewrite the password file and ACL from the registry; have the broker re-read them."""
        self.broker_files.write_users(
            mosquitto_password_hash(self.server_password),
            mosquitto_password_hash(self.enroll_password),
            self.registry.broker_users(),
        )
        return self.broker_files.reload() if reload else False

    def revoke(self, device_id: str) -> bool:
        """Revoke in the registry (the coordinator stops accepting at once) and at the broker."""
        self.registry.revoke(device_id)
        return self.sync_broker()


class Enroller:
    """Serves ``genfl/<fleet>/enroll/+/request`` inside ``genfl-server serve``."""

    def __init__(self, security: FleetSecurity, publish) -> None:  # type: ignore[no-untyped-def]
        self.security = security
        self.topics = Topics(security.fleet)
        self._publish = publish
        self.enrolled = 0
        self.refused = 0

    @property
    def subscription(self) -> str:
        return enroll_topic(self.topics, "+", "request")

    def handles(self, topic: str) -> bool:
        return topic.startswith(f"{self.topics.root}/enroll/")

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 5 or parts[4] != "request" or not parts[3]:
            raise ProtocolError("unknown-topic", topic[:200])
        client_id = parts[3]
        request = EnrollRequest.decode(payload)
        try:
            enrolled = self.security.registry.redeem(request.secret, request.public_key)
        except (EnrollmentRefused, ConfigError) as exc:
            self.refused += 1
            log.warning("enrollment refused for client %s: %s", client_id[:64], exc)
            reply = EnrollReply(ok=False, reason=str(exc))
        else:
            try:
                self.security.sync_broker()
            except GenflError as exc:
                log.error("device %s enrolled but the broker was not reloaded: %s", enrolled.device_id, exc)
            self.enrolled += 1
            log.info("device %s enrolled", enrolled.device_id)
            reply = EnrollReply(
                ok=True,
                device_id=enrolled.device_id,
                fleet=self.security.fleet,
                username=enrolled.device_id,
                password=enrolled.broker_password,
                server_public_key=self.security.public_key,
            )
        self._publish(enroll_topic(self.topics, client_id, "reply"), reply.signed(request.secret, client_id).encode())

"""``genfl-edge enroll``: make this board's key, trade the token for an identity, write the config.

Where things go (:class:`EdgeHome`)::

    --home DIR / $GENFL_EDGE_HOME    DIR/edge.toml  DIR/device.key  DIR/ca.crt  DIR/state/
    root                             /etc/genfl/edge.toml  /etc/genfl/device.key  /etc/genfl/ca.crt
                                     /var/lib/genfl-edge/
    anyone else                      ~/.config/genfl-edge/{edge.toml,device.key,ca.crt}
                                     ~/.local/state/genfl-edge/

The private key is made here and never leaves the board; the config holds the
broker password, so both are written 0600 (by root, when root enrolls). The
config names the key and the CA relative to its own folder, so that the same
files work where they are and as systemd credentials: the unit loads them with
``LoadCredential=`` into a folder only the service's (dynamic) user can read.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from protocol import (
    BrokerAddress,
    BrokerRefused,
    ConfigError,
    EnrollmentToken,
    EnrollReply,
    EnrollRequest,
    GenflError,
    MqttTransport,
    ProtocolError,
    Topics,
    TransportError,
    enroll_topic,
    generate_signing_key,
    parse_brokers,
    parse_classes,
    public_key_from_text,
    public_key_text,
    save_signing_key,
    write_secret,
)

from ._daemon import agent_config_text

__all__ = ["SYSTEM_CONFIG", "EdgeHome", "EnrollmentFailed", "enroll", "find_config"]

log = logging.getLogger("genfl.edge")


class EnrollmentFailed(GenflError):
    """The server refused the token (unknown, used, expired) or did not answer."""

    exit_code = 6


@dataclass(frozen=True)
class EdgeHome:
    config: Path
    key: Path
    ca: Path
    state_dir: Path

    @classmethod
    def resolve(cls, home: Path | None = None) -> EdgeHome:
        chosen = home or (Path(os.environ["GENFL_EDGE_HOME"]) if os.environ.get("GENFL_EDGE_HOME") else None)
        if chosen is not None:
            return cls(chosen / "edge.toml", chosen / "device.key", chosen / "ca.crt", chosen / "state")
        if os.geteuid() == 0:
            etc = Path("/etc/genfl")
            return cls(etc / "edge.toml", etc / "device.key", etc / "ca.crt", Path("/var/lib/genfl-edge"))
        user_home = Path.home()
        config_dir = Path(os.environ.get("XDG_CONFIG_HOME") or user_home / ".config") / "genfl-edge"
        state_dir = Path(os.environ.get("XDG_STATE_HOME") or user_home / ".local" / "state") / "genfl-edge"
        return cls(config_dir / "edge.toml", config_dir / "device.key", config_dir / "ca.crt", state_dir)


SYSTEM_CONFIG = Path("/etc/genfl/edge.toml")  # where a root `enroll` writes the board's settings


def _readable(path: Path) -> bool | None:
    """True: a file this process can read; False: none there; None: there may be one, but not for this user."""
    try:
        if not path.is_file():
            return False
    except PermissionError:  # a folder on the way that this user may not enter
        return None
    return True if os.access(path, os.R_OK) else None


def find_config(home: Path | None = None, system: Path = SYSTEM_CONFIG) -> Path:
    """The settings file ``enroll`` wrote for this board, readable by this process; else a ConfigError that says
    why: none yet (enroll first), or one this user may not read (it holds the broker password: root's, or the
    service's credential)."""
    chosen = EdgeHome.resolve(home).config
    needs_root = (
        "it holds the broker password and only root (or the service, through its credentials) may read it: "
        "run this as root (sudo genfl-edge ...) or give --config"
    )
    found = _readable(chosen)
    if found:
        return chosen
    if found is None:
        raise ConfigError(f"{chosen}: uid {os.geteuid()} may not read it; {needs_root}")
    explicit = home is not None or bool(os.environ.get("GENFL_EDGE_HOME"))
    if not explicit and chosen != system:
        in_system = _readable(system)
        if in_system:
            return system
        if in_system is None:
            raise ConfigError(f"this board was enrolled as root ({system}); {needs_root}")
    raise ConfigError(f"no config at {chosen}: enroll first (genfl-edge enroll) or give --config")


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when it lies inside it (the config's folder), else absolute."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def enroll(
    server: str,
    token_text: str,
    home: EdgeHome,
    *,
    data: str = "digits",
    ca_file: Path | None = None,
    timeout_s: float = 30.0,
    force: bool = False,
) -> dict[str, object]:
    """Enroll this board; returns the settings written to ``home.config`` (password left out)."""
    token = EnrollmentToken.parse(token_text)
    addresses = parse_brokers(server)
    address = addresses[0]
    if not address.tls:
        raise ConfigError("enrollment sends credentials: use an mqtts:// server URL")
    if home.config.exists() and not force:
        raise ConfigError(f"{home.config} exists: this board is enrolled already (--force to enroll again)")
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"CA file {ca_file} not found")
    key = generate_signing_key()
    reply = _exchange(addresses, token, public_key_text(key), ca_file, timeout_s)
    if not reply.ok:
        raise EnrollmentFailed(f"the server refused the token: {reply.reason}")
    public_key_from_text(reply.server_public_key)
    save_signing_key(home.key, key)
    if ca_file is not None:
        home.ca.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca_file, home.ca)
    home.state_dir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {
        "device_id": reply.device_id,
        "fleet": reply.fleet,
        "broker": ",".join(a.url() for a in addresses),
        "data": data,
        "state_dir": str(home.state_dir),
        "username": reply.username,
        "device_key": _relative_to(home.key, home.config.parent),
        "server_public_key": reply.server_public_key,
    }
    if reply.classes:  # the fleet's class list: the board numbers its folders by it
        settings["classes"] = list(parse_classes(reply.classes))
    if ca_file is not None:
        settings["ca_file"] = _relative_to(home.ca, home.config.parent)
    comment = "genfl-edge: written by `genfl-edge enroll`; holds the broker password (mode 0600)."
    write_secret(home.config, agent_config_text({**settings, "password": reply.password}, comment).encode())
    return settings


def _exchange(
    addresses: tuple[BrokerAddress, ...],
    token: EnrollmentToken,
    public_key: str,
    ca_file: Path | None,
    timeout_s: float,
) -> EnrollReply:
    """On the token's own login: send the request, wait for the server's reply (verified with the token's secret)."""
    client_id = token.enroll_user  # the broker binds client ids to user names: this token's login is its id
    topics = Topics(token.fleet)
    transport = MqttTransport(
        addresses, client_id, username=token.enroll_user, password=token.enroll_password, ca_file=ca_file,
        session_expiry_s=0,
    )  # fmt: skip
    replies: list[bytes] = []
    transport.set_handler(lambda topic, payload: replies.append(payload))
    try:
        transport.connect(timeout_s=min(timeout_s, 15.0))
    except BrokerRefused as exc:
        raise EnrollmentFailed(
            f"the broker refused this token's login: the token was already used, has expired, or is not from "
            f"this fleet; ask for a new one ({exc})"
        ) from exc
    try:
        # One connection: the broker takes the SUBSCRIBE before the PUBLISH, so the reply cannot be missed.
        reply_topic = enroll_topic(topics, client_id, "reply")
        transport.subscribe(reply_topic)
        request = EnrollRequest(secret=token.secret, public_key=public_key)
        request_topic = enroll_topic(topics, client_id, "request")
        transport.publish(request_topic, request.encode())
        deadline = time.monotonic() + timeout_s
        reply: EnrollReply | None = None
        while reply is None and time.monotonic() < deadline:
            transport.poll(0.2)
            refused = transport.refused_filters.get(reply_topic) or transport.refused_topics.get(request_topic)
            if refused:  # the login is good, the fleet's topics are not its own
                raise EnrollmentFailed(
                    f"the broker {transport.node} takes this token's login but not fleet {token.fleet!r}'s "
                    f"enrollment topics ({refused}): the token is for another fleet than this broker's; ask this "
                    "fleet's server for one"
                )
            while replies and reply is None:
                try:
                    candidate = EnrollReply.decode(replies.pop(0))
                    candidate.verify(token.secret, client_id)
                    reply = candidate
                except (ProtocolError, ConfigError) as exc:
                    log.warning("ignoring a bad enrollment reply: %s", exc)
    finally:
        transport.close()
    if reply is None:
        raise EnrollmentFailed(
            f"no enrollment reply from {transport.node} within {timeout_s:.0f} s: is `genfl-server serve` of "
            f"fleet {token.fleet!r} running on this broker?"
        )
    return reply


def check_broker(
    server: str, username: str | None, password: str | None, ca_file: Path | None
) -> tuple[bool, bool, str]:
    """(reachable, logged in, why not) now."""
    probe = MqttTransport(
        parse_brokers(server),
        f"genfl-status-{secrets.token_hex(4)}",
        username=username,
        password=password,
        ca_file=ca_file,
        session_expiry_s=0,
    )
    try:
        probe.connect(timeout_s=5.0)
    except BrokerRefused as exc:
        return True, False, str(exc)
    except TransportError as exc:
        return False, False, str(exc)
    probe.close()
    return True, True, ""

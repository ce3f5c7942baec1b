"""Enrollment: a board trades a single-use token for its identity and broker credentials.

Token text (what ``genfl-server devices add`` prints)::

    gfl2:<fleet>:<enrollment login>:<enrollment password>:<secret>

Each token has its own broker login, valid only while the token is pending;
its ACL allows nothing but ``genfl/<fleet>/enroll/<login>/request`` (write)
and ``.../reply`` (read), and the broker makes the login its client id. The
board sends its public key and the secret; the server answers with the device
id, a broker password and its own signing key, all under an HMAC keyed with
the secret: only someone who knows the token (the server) can produce a reply
the board accepts, so the board can pin the server key it receives.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ._classes import parse_classes
from ._errors import ConfigError, ProtocolError
from ._json import loads_bounded
from ._topics import Topics, validate_name

__all__ = [
    "EnrollReply",
    "EnrollRequest",
    "EnrollmentToken",
    "enroll_topic",
]

_TOKEN_PREFIX = "gfl2"
_MAX_BYTES = 8192


@dataclass(frozen=True)
class EnrollmentToken:
    fleet: str
    enroll_user: str
    enroll_password: str = field(repr=False)
    secret: str = field(repr=False)

    def text(self) -> str:
        return f"{_TOKEN_PREFIX}:{self.fleet}:{self.enroll_user}:{self.enroll_password}:{self.secret}"

    @classmethod
    def parse(cls, text: str) -> EnrollmentToken:
        parts = text.strip().split(":")
        if parts and parts[0] == "gfl1":
            raise ConfigError("this token is from an older server that shared one enrollment login; ask for a new one")
        if len(parts) != 5 or parts[0] != _TOKEN_PREFIX or not parts[3] or len(parts[4]) < 16:
            raise ConfigError("this is not a genfl enrollment token (expected gfl2:FLEET:LOGIN:...:...)")
        validate_name("fleet", parts[1])
        validate_name("enrollment login", parts[2])
        return cls(parts[1], parts[2], parts[3], parts[4])


def enroll_topic(topics: Topics, client_id: str, kind: str) -> str:
    return f"{topics.root}/enroll/{client_id}/{kind}"


def _load(payload: bytes, kind: str) -> dict[str, Any]:
    if len(payload) > _MAX_BYTES:
        raise ProtocolError("bad-frame", "enrollment message too large")
    document = loads_bounded(payload, "enrollment message")
    if not isinstance(document, dict) or document.pop("type", None) != kind:
        raise ProtocolError("unexpected-type", f"expected {kind}")
    return document


_LONG_STRINGS = {"classes": 65536}  # the fleet's class list, comma-joined


def _strings(name: str, document: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        value = document.get(key)
        if not isinstance(value, str) or len(value) > _LONG_STRINGS.get(key, 1024):
            raise ProtocolError("bad-field", f"{name}.{key} must be a short string")


@dataclass(frozen=True)
class EnrollRequest:
    secret: str = ""
    public_key: str = ""

    def encode(self) -> bytes:
        return json.dumps({"type": "enroll-request", **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, payload: bytes) -> EnrollRequest:
        document = _load(payload, "enroll-request")
        if set(document) != {f.name for f in fields(cls)}:
            raise ProtocolError("bad-field", "enroll-request needs exactly secret and public_key")
        _strings("enroll-request", document, ("secret", "public_key"))
        return cls(**document)


@dataclass(frozen=True)
class EnrollReply:
    ok: bool
    reason: str = ""
    device_id: str = ""
    fleet: str = ""
    username: str = ""
    password: str = ""
    server_public_key: str = ""
    classes: str = ""  # the fleet's class names in the model's order, comma-joined (boards number their data by them)
    mac: str = ""

    def _body(self, client_id: str) -> bytes:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mac"}
        return json.dumps({**values, "client_id": client_id}, sort_keys=True).encode()

    def signed(self, secret: str, client_id: str) -> EnrollReply:
        mac = hmac.new(secret.encode(), self._body(client_id), hashlib.sha256).hexdigest()
        return EnrollReply(**{**asdict(self), "mac": mac})

    def verify(self, secret: str, client_id: str) -> None:
        expected = hmac.new(secret.encode(), self._body(client_id), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.mac):
            raise ProtocolError("bad-signature", "the enrollment reply was not made with this token")

    def encode(self) -> bytes:
        return json.dumps({"type": "enroll-reply", **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, payload: bytes) -> EnrollReply:
        document = _load(payload, "enroll-reply")
        if set(document) != {f.name for f in fields(cls)} or not isinstance(document["ok"], bool):
            raise ProtocolError("bad-field", "enroll-reply has the wrong fields")
        _strings("enroll-reply", document, tuple(f.name for f in fields(cls) if f.name != "ok"))
        reply = cls(**document)
        if reply.ok:
            validate_name("device id", reply.device_id)
            validate_name("fleet", reply.fleet)
            if reply.classes:
                try:
                    parse_classes(reply.classes)
                except ConfigError as exc:
                    raise ProtocolError("bad-field", f"enroll-reply.classes: {exc}") from exc
        return reply

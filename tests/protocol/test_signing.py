"""Ed25519 frame signatures, keys on disk, and the enrollment token and reply."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from protocol import (
    ConfigError,
    EnrollmentToken,
    EnrollReply,
    EnrollRequest,
    OpenGuard,
    ProtocolError,
    SignedGuard,
    Update,
    decode_message,
    encode_message,
    generate_signing_key,
    load_signing_key,
    public_key_from_text,
    public_key_text,
    save_signing_key,
    sign_frame,
    verify_frame,
)


def _update_frame() -> bytes:
    return encode_message(
        Update(round=3, device_id="a", base_model_id="0" * 64, num_samples=5, train_loss=0.1, train_accuracy=0.9,
               delta={"w": np.arange(4, dtype=np.float32)})
    )  # fmt: skip


def test_a_signed_frame_verifies_and_gives_back_the_same_message() -> None:
    key = generate_signing_key()
    frame = _update_frame()
    payload = sign_frame("fleet", frame, key)
    assert verify_frame("fleet", payload, key.public_key()) == frame
    assert decode_message(verify_frame("fleet", payload, key.public_key()), Update).round == 3
    assert sign_frame("fleet", frame, key) == payload  # deterministic: a re-send is byte-identical


@pytest.mark.parametrize("position", [5, 40, 70, 100, -1])
def test_any_flipped_byte_breaks_the_signature(position: int) -> None:
    key = generate_signing_key()
    payload = bytearray(sign_frame("fleet", _update_frame(), key))
    payload[position] ^= 0x01
    with pytest.raises(ProtocolError) as caught:
        verify_frame("fleet", bytes(payload), key.public_key())
    assert caught.value.reason in ("bad-signature", "unsigned")


def test_a_frame_signed_for_another_fleet_or_by_another_key_is_refused() -> None:
    key, other = generate_signing_key(), generate_signing_key()
    payload = sign_frame("fleet-a", _update_frame(), key)
    with pytest.raises(ProtocolError, match="bad-signature"):
        verify_frame("fleet-b", payload, key.public_key())
    with pytest.raises(ProtocolError, match="bad-signature"):
        verify_frame("fleet-a", payload, other.public_key())


def test_an_unsigned_frame_is_refused_by_a_signed_guard_and_passed_by_an_open_one() -> None:
    key = generate_signing_key()
    guard = SignedGuard("f", key, lambda sender: key.public_key())
    frame = _update_frame()
    with pytest.raises(ProtocolError, match="unsigned"):
        guard.open("a", frame)
    assert guard.open("a", guard.seal(frame)) == frame
    assert OpenGuard().open("a", frame) == frame


def test_keys_are_written_owner_only_and_read_back(tmp_path: Path) -> None:
    key = generate_signing_key()
    path = tmp_path / "keys" / "device.key"
    save_signing_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_text(load_signing_key(path)) == public_key_text(key)
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="cannot read the signing key"):
        load_signing_key(path)
    with pytest.raises(ConfigError):
        public_key_from_text("bm90IDMyIGJ5dGVz")


def test_tokens_parse_and_bad_ones_say_what_they_should_look_like() -> None:
    token = EnrollmentToken("fleet-1", "enroll-0123456789ab", "enrollpw", "s" * 32)
    assert EnrollmentToken.parse(token.text()) == token
    assert "enrollpw" not in repr(token) and "sss" not in repr(token)
    for bad in ("", "gfl2:fleet", "gfl3:f:u:p:" + "s" * 32, "gfl2:bad/fleet:u:p:" + "s" * 32, "gfl2:f:u:p:short",
                "gfl2:f:bad/login:p:" + "s" * 32, "gfl2:f:u\n:p:" + "s" * 32):  # fmt: skip
        with pytest.raises(ConfigError):
            EnrollmentToken.parse(bad)
    with pytest.raises(ConfigError, match="older server"):
        EnrollmentToken.parse("gfl1:f:p:" + "s" * 32)


def test_an_enrollment_reply_verifies_only_with_its_token_and_client_id() -> None:
    reply = EnrollReply(ok=True, device_id="a", fleet="f", username="a", password="pw", server_public_key="k")
    signed = reply.signed("secret-1", "enroll-1")
    decoded = EnrollReply.decode(signed.encode())
    decoded.verify("secret-1", "enroll-1")
    with pytest.raises(ProtocolError):
        decoded.verify("secret-2", "enroll-1")
    with pytest.raises(ProtocolError):
        decoded.verify("secret-1", "enroll-2")
    tampered = EnrollReply(**{**decoded.__dict__, "password": "attacker"})
    with pytest.raises(ProtocolError):
        tampered.verify("secret-1", "enroll-1")


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"[]", b'{"type": "enroll-request"}', b'{"type": "enroll-request", "secret": 1, "public_key": "k"}',
     b'{"type": "other", "secret": "s", "public_key": "k"}', b"x" * 10000],
)  # fmt: skip
def test_malformed_enrollment_requests_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        EnrollRequest.decode(payload)

"""The secured fleet's server side: registry, broker files, certificates, the signed coordinator."""

from __future__ import annotations

import sqlite3
import ssl
import stat
import time
from pathlib import Path

import bcrypt
import numpy as np
import pytest

from cloud_server import Coordinator, CoordinatorConfig, FedAvg, SqliteJournal, StrategyConfig
from cloud_server.broker._broker_files import mosquitto_password_hash, render_acl
from cloud_server.fleet._pki import issue_server_certificate, new_ca
from cloud_server.fleet._registry import DeviceRegistry, EnrollmentRefused
from cloud_server.fleet._security import write_broker_config
from protocol import (
    ConfigError,
    DeviceState,
    InMemoryBus,
    ProtocolError,
    SignedGuard,
    Task,
    Topics,
    Update,
    decode_message,
    encode_message,
    generate_signing_key,
    public_key_text,
)

FLEET = "secure"
TOPICS = Topics(FLEET)


def test_a_token_redeems_once_and_unknown_or_expired_ones_are_refused(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "registry.sqlite3")
    key = public_key_text(generate_signing_key())
    token = registry.add_token("board-1", ttl_s=60)
    secret = token.secret
    stored = (tmp_path / "registry.sqlite3").read_bytes().decode(errors="replace")
    assert secret not in stored and token.enroll_password not in stored  # only hashes
    assert registry.enrollment_users()[0][0] == token.enroll_user  # the token's own login, while it is pending
    with pytest.raises(EnrollmentRefused, match="another enrollment login"):
        registry.redeem(secret, key, enroll_user="enroll-000000000000")
    enrolled = registry.redeem(secret, key, enroll_user=token.enroll_user)
    assert registry.enrollment_users() == []  # used: its login is gone at the next sync
    assert enrolled.device_id == "board-1" and len(enrolled.broker_password) >= 24
    with pytest.raises(EnrollmentRefused, match="already used"):
        registry.redeem(secret, key)
    with pytest.raises(EnrollmentRefused, match="unknown"):
        registry.redeem("x" * 32, key)
    late = registry.add_token("board-2", ttl_s=1, now=time.time() - 10)
    assert registry.enrollment_users() == []  # expired: no login either
    with pytest.raises(EnrollmentRefused, match="expired"):
        registry.redeem(late.secret, key)
    with pytest.raises(ConfigError, match="already enrolled"):
        registry.add_token("board-1", ttl_s=60)
    for reserved in ("genfl-server", "enroll-0123456789ab"):
        with pytest.raises(ConfigError, match="reserved"):
            registry.add_token(reserved, ttl_s=60)
    assert stat.S_IMODE((tmp_path / "registry.sqlite3").stat().st_mode) == 0o600


def test_every_login_has_a_hash_for_each_broker_and_older_registries_say_who_lacks_one(tmp_path: Path) -> None:
    # Prepare: a registry as it was before cluster logins, with one enrolled board
    path = tmp_path / "registry.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript("""
            CREATE TABLE tokens (token_hash TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
                expires REAL NOT NULL, used REAL, enroll_user TEXT, enroll_hash TEXT, cancelled REAL);
            CREATE TABLE devices (device_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, password_hash TEXT NOT NULL,
                enrolled REAL NOT NULL, revoked REAL);
        """)
        old.execute("INSERT INTO devices VALUES ('old-board', ?, ?, 0, NULL)",
                    (public_key_text(generate_signing_key()), mosquitto_password_hash("pw")))  # fmt: skip
    registry = DeviceRegistry(path)
    # Execute
    token = registry.add_token("new-board", ttl_s=60)
    enrolled = registry.redeem(token.secret, public_key_text(generate_signing_key()))
    pending = registry.add_token("next-board", ttl_s=60)
    # Assert: Mosquitto's hashes for everyone; bcrypt ones (NATS) for what was made since, checking the password
    assert [d for d, _ in registry.broker_users("mosquitto")] == ["new-board", "old-board"]
    cluster = dict(registry.broker_users("nats"))
    assert list(cluster) == ["new-board"]
    assert bcrypt.checkpw(enrolled.broker_password.encode(), cluster["new-board"].encode())
    ((login, hashed),) = registry.enrollment_users(broker="nats")
    assert login == pending.enroll_user and bcrypt.checkpw(pending.enroll_password.encode(), hashed.encode())
    assert registry.without_login("nats") == ["old-board"] and registry.without_login("mosquitto") == []


def test_revocation_is_seen_by_another_connection_at_once(tmp_path: Path) -> None:
    serving = DeviceRegistry(tmp_path / "r.sqlite3")
    key = generate_signing_key()
    serving.redeem(serving.add_token("a", 60).secret, public_key_text(key))
    assert serving.public_key("a") is not None
    with pytest.raises(ProtocolError, match="unknown-device"):
        serving.public_key("b")
    DeviceRegistry(tmp_path / "r.sqlite3").revoke("a")  # the `devices revoke` process
    with pytest.raises(ProtocolError, match="revoked"):
        serving.public_key("a")
    assert serving.revoked_ids() == {"a"}
    assert serving.broker_users() == []


def test_the_acl_confines_each_device_and_each_token_login_to_its_own_topics() -> None:
    acl = render_acl("f", ["a", "b"], ["enroll-aaaa"])
    a_block = acl.split("user a\n")[1].split("\n\n")[0]
    assert "topic write genfl/f/devices/a/update" in a_block
    assert "topic readwrite genfl/f/devices/a/state" in a_block
    assert "topic read genfl/f/devices/a/task" in a_block
    assert "devices/b" not in a_block and "#" not in a_block and "+" not in a_block
    login = acl.split("user enroll-aaaa\n")[1].split("\n\n")[0]
    assert login.splitlines() == ["topic write genfl/f/enroll/enroll-aaaa/request",
                                  "topic read genfl/f/enroll/enroll-aaaa/reply"]  # fmt: skip
    assert "pattern" not in acl and "%c" not in acl  # no rule shared by every user
    assert mosquitto_password_hash("pw", b"0" * 12).startswith("$7$101$")


def test_the_broker_certificate_chains_to_the_ca_and_names_the_host(tmp_path: Path) -> None:
    ca = new_ca("f")
    server = issue_server_certificate(ca, "127.0.0.1")
    (tmp_path / "ca.crt").write_bytes(ca.certificate_pem())
    (tmp_path / "server.crt").write_bytes(server.certificate_pem())
    (tmp_path / "server.key").write_bytes(server.key_pem())
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    server.certificate.verify_directly_issued_by(ca.certificate)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    assert context.check_hostname


def test_broker_config_keeps_secrets_owner_only(tmp_path: Path) -> None:
    setup = write_broker_config(tmp_path / "state", tmp_path / "broker", fleet="f", host="broker.example", port=8883)
    assert setup.url == "mqtts://broker.example:8883"
    security = tmp_path / "state" / "security"
    assert stat.S_IMODE(security.stat().st_mode) == 0o700
    for name in ("signing.key", "ca.key", "server.password", "registry.sqlite3"):
        assert stat.S_IMODE((security / name).stat().st_mode) == 0o600, name
    for name in ("server.key", "passwd", "acl"):
        assert stat.S_IMODE((tmp_path / "broker" / name).stat().st_mode) == 0o600, name
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 8883" in conf
    assert "use_username_as_clientid true" in conf.split("listener 8883")[1]  # client ids belong to their users
    assert f"max_packet_size {4 * 1024 * 1024}" in conf
    with pytest.raises(ConfigError, match="set up for fleet"):
        write_broker_config(tmp_path / "state", tmp_path / "broker", fleet="other", host="h")


class SignedDevice:
    def __init__(self, bus: InMemoryBus, device_id: str, server_key, key=None) -> None:  # type: ignore[no-untyped-def]
        self.device_id = device_id
        self.key = key or generate_signing_key()
        self.guard = SignedGuard(FLEET, self.key, lambda sender: server_key)
        self.transport = bus.connect()
        self.received: list[object] = []
        self.transport.set_handler(
            lambda topic, payload: self.received.append(decode_message(self.guard.open("server", payload)))
        )
        for channel in ("task", "ack"):
            self.transport.subscribe(TOPICS.device(device_id, channel))  # type: ignore[arg-type]

    def send(self, channel: str, message: object, guard: SignedGuard | None = None) -> bytes:
        payload = (guard or self.guard).seal(encode_message(message))  # type: ignore[arg-type]
        self.transport.publish(TOPICS.device(self.device_id, channel), payload)  # type: ignore[arg-type]
        return payload

    def update(self, task: Task, value: float) -> Update:
        return Update(round=task.round, device_id=self.device_id, base_model_id=task.model_id, num_samples=10,
                      train_loss=0.5, train_accuracy=0.5, delta={"w": np.full(3, value, dtype=np.float32)})  # fmt: skip


def _tasks(device: SignedDevice) -> list[Task]:
    return [m for m in device.received if isinstance(m, Task)]


def test_forged_and_replayed_updates_are_refused_and_a_revoked_update_is_withdrawn(tmp_path: Path) -> None:
    # Prepare: three enrolled devices and a stranger; a coordinator that signs and checks signatures
    registry = DeviceRegistry(tmp_path / "registry.sqlite3")
    server_key = generate_signing_key()
    bus = InMemoryBus()
    devices = {}
    for name in ("a", "b", "c"):
        device = SignedDevice(bus, name, server_key.public_key())
        registry.redeem(registry.add_token(name, 60).secret, public_key_text(device.key))
        devices[name] = device
    a, b, c = devices["a"], devices["b"], devices["c"]
    clock = [0.0]
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=3, min_devices=2, round_timeout_s=60)
    coordinator = Coordinator(
        config, FedAvg(StrategyConfig()), bus.connect(), {"w": np.zeros(3, dtype=np.float32)},
        journal=SqliteJournal(tmp_path / "state"), guard=SignedGuard(FLEET, server_key, registry.public_key),
        revoked=registry.revoked_ids, clock=lambda: clock[0],
    )  # fmt: skip
    coordinator.start()
    stranger = SignedDevice(bus, "d", server_key.public_key())  # never enrolled
    for device in (a, b, c, stranger):
        device.send("state", DeviceState(device_id=device.device_id, state="online", num_samples=10))
    bus.drain()
    assert coordinator.online_devices() == ["a", "b", "c"]
    assert coordinator.rejected["unknown-device"] == 1
    # Execute 1 (round 1 = a, b): a forged update for a (a's topic, the wrong key), then the real ones
    forger = SignedGuard(FLEET, generate_signing_key(), lambda sender: server_key.public_key())
    a.send("update", a.update(_tasks(a)[0], 100.0), guard=forger)
    a_round1 = a.send("update", a.update(_tasks(a)[0], 1.0))
    b.send("update", b.update(_tasks(b)[0], 1.0))
    bus.drain()
    assert coordinator.rejected["bad-signature"] == 1
    np.testing.assert_array_equal(coordinator.global_state["w"], np.full(3, 1.0, dtype=np.float32))
    # Execute 2 (round 2 = a, b, c): b's update is accepted, then b is revoked while the others train
    assert coordinator.round_number == 2 and [t.round for t in _tasks(c)] == [2]
    b.send("update", b.update(_tasks(b)[1], 30.0))
    bus.drain()
    registry.revoke("b")
    clock[0] += 2.0
    coordinator.tick()
    a.send("update", a.update(_tasks(a)[1], 2.0))
    c.send("update", c.update(_tasks(c)[0], 4.0))
    bus.drain()
    # Assert: round 2 aggregated a and c only: 1 + (2 + 4) / 2
    assert coordinator.results[1].devices == 2
    np.testing.assert_array_equal(coordinator.global_state["w"], np.full(3, 4.0, dtype=np.float32))
    # Execute 3 (round 3 = a, c): a's round-1 frame arrives again
    assert coordinator.round_number == 3 and [t.round for t in _tasks(b)] == [1, 2]  # b is not picked again
    a.transport.publish(TOPICS.device("a", "update"), a_round1)
    b.send("update", b.update(_tasks(b)[1], 30.0))  # and the revoked device tries once more
    bus.drain()
    assert coordinator.rejected["replay"] == 1
    assert coordinator.rejected["revoked"] == 1
    assert coordinator.round_progress() == (3, 0, 2)


def test_a_pending_token_is_cancelled_by_revoke_and_a_revoked_device_comes_back_only_by_readmission(
    tmp_path: Path,
) -> None:
    registry = DeviceRegistry(tmp_path / "r.sqlite3")
    # a token not used yet: revoke cancels it, its login leaves, it can no longer enroll
    pending = registry.add_token("cam", 60, now=100.0)
    done = registry.revoke("cam", now=101.0)
    assert (done.device, done.tokens_cancelled, str(done)) == (False, 1, "cancelled 1 pending token")
    assert registry.pending_tokens(now=102.0) == [] and registry.enrollment_users(now=102.0) == []
    with pytest.raises(EnrollmentRefused, match="cancelled"):
        registry.redeem(pending.secret, public_key_text(generate_signing_key()), now=102.0)
    with pytest.raises(ConfigError, match="no enrolled device and no pending token"):
        registry.revoke("nobody")
    # an enrolled device, revoked: a plain token for its name is refused with the way back
    registry.redeem(registry.add_token("cam", 60, now=103.0).secret, public_key_text(generate_signing_key()),
                    now=104.0)  # fmt: skip
    with pytest.raises(ConfigError, match="already enrolled"):
        registry.add_token("cam", 60, now=105.0)
    assert str(registry.revoke("cam", now=106.0)) == "revoked"
    assert str(registry.revoke("cam", now=106.5)) == "already revoked"
    with pytest.raises(ConfigError, match="--readmit"):
        registry.add_token("cam", 60, now=107.0)
    # re-admitted: a new key, a new password, no longer revoked
    new_key = generate_signing_key()
    again = registry.redeem(registry.add_token("cam", 60, readmit=True, now=108.0).secret, public_key_text(new_key),
                            now=109.0)  # fmt: skip
    assert again.device_id == "cam" and registry.revoked_ids() == set()
    assert registry.public_key("cam").public_bytes_raw() == new_key.public_key().public_bytes_raw()
    assert [user for user, _ in registry.broker_users()] == ["cam"]


def test_a_token_made_before_a_revocation_cannot_readmit(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "r.sqlite3")
    first, spare = registry.add_token("cam", 60, now=100.0), registry.add_token("cam", 60, now=100.5)
    registry.redeem(first.secret, public_key_text(generate_signing_key()), now=101.0)
    registry.revoke("cam", now=102.0)  # cancels the spare token too
    with pytest.raises(EnrollmentRefused, match="cancelled"):
        registry.redeem(spare.secret, public_key_text(generate_signing_key()), now=103.0)
    assert registry.revoked_ids() == {"cam"}


def test_an_enrolling_board_keeps_its_token_login_until_the_reply_is_out_and_its_own_login_is_there_before(
    tmp_path: Path,
) -> None:
    # Prepare: a secured fleet with a pending token (no broker runs: the files are the broker's view)
    from cloud_server.fleet._security import Enroller, FleetSecurity
    from protocol import EnrollmentToken, EnrollRequest

    write_broker_config(tmp_path / "state", tmp_path / "broker", fleet=FLEET, host="localhost", port=8883)
    security = FleetSecurity(tmp_path / "state")
    token = EnrollmentToken.parse(security.new_token("board-1", 60)[0])
    seen_at_reply: list[str] = []
    enroller = Enroller(security, lambda topic, payload: seen_at_reply.append((tmp_path / "broker/acl").read_text()))
    # Execute: the board's request comes in on its token's login
    request = EnrollRequest(secret=token.secret, public_key=public_key_text(generate_signing_key()))
    enroller.on_message(f"{TOPICS.root}/enroll/{token.enroll_user}/request", request.encode())
    after = (tmp_path / "broker/acl").read_text()
    security.close()
    # Assert: when the reply went out the broker had the device's login and still the token's (a reload that drops
    # a login disconnects it, and the board would miss its reply); after it, only the device's
    assert len(seen_at_reply) == 1
    assert "user board-1" in seen_at_reply[0] and f"user {token.enroll_user}" in seen_at_reply[0]
    assert "user board-1" in after and token.enroll_user not in after


def test_on_a_cluster_a_used_tokens_login_stays_while_its_reply_crosses_the_nodes(tmp_path: Path) -> None:
    # Prepare: a secured cluster's fleet with a pending token, and the server's clock in the test's hands
    from cloud_server.broker._cluster import ClusterSpec
    from cloud_server.fleet._security import CLUSTER_REPLY_GRACE_S, Enroller, FleetSecurity, write_cluster_setup
    from protocol import EnrollmentToken, EnrollRequest

    write_cluster_setup(tmp_path / "state", ClusterSpec(), tmp_path / "c", fleet="plant-5")
    security = FleetSecurity(tmp_path / "state")
    token = EnrollmentToken.parse(security.new_token("board-1", 600)[0])
    now = [1000.0]
    enroller = Enroller(security, lambda topic, payload: None, clock=lambda: now[0])

    def logins() -> str:
        return (tmp_path / "c" / "accounts.conf").read_text()

    # Execute: the request; the loop ticks on, then past the grace
    request = EnrollRequest(secret=token.secret, public_key=public_key_text(generate_signing_key()))
    enroller.on_message(f"genfl/plant-5/enroll/{token.enroll_user}/request", request.encode())
    after_reply = logins()
    now[0] += 6.0
    enroller.tick()  # (the expiry check runs too: the used login is kept through it)
    during = logins()
    now[0] += CLUSTER_REPLY_GRACE_S
    enroller.tick()
    security.close()
    # Assert: the token's login outlived the reply by the grace, then went; the device's stayed
    assert f'"user": "{token.enroll_user}"' in after_reply and f'"user": "{token.enroll_user}"' in during
    assert f'"user": "{token.enroll_user}"' not in logins() and '"user": "board-1"' in logins()

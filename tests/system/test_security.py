"""A secured fleet against a real Mosquitto started with the config `genfl-server broker-config` writes.

Each test starts its own broker on a free port (TLS, password file, ACL), a
real `genfl-server serve`, and enrolls boards with the real `genfl-edge enroll`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_server.fleet._pki import new_ca
from cloud_server.rounds._journal_reader import JournalReader
from protocol import (
    BrokerAddress,
    BrokerRefused,
    EnrollmentToken,
    MqttTransport,
    TransportError,
    decode_message,
    generate_signing_key,
    sign_frame,
    verify_frame,
)
from tests.system._helpers import wait_for
from tests.system._secured import SecuredFleet, collect, pump


def test_enroll_then_status_then_run_take_part_in_a_signed_round(secured: SecuredFleet) -> None:
    # Prepare
    secured.serve("--rounds", "1", "--min-devices", "2", "--local-epochs", "1", "--round-timeout", "300")
    homes = {name: secured.enroll(name) for name in ("board-a", "board-b")}
    for home in homes.values():
        for name in ("edge.toml", "device.key"):
            assert (home / name).stat().st_mode & 0o077 == 0, name
    # Execute: the used token again
    token_again = secured.cli("server", "devices", "add", "board-c", "--state-dir", str(secured.state)).stdout.strip()
    secured.cli("edge", "enroll", "--server", secured.url, "--token", token_again, "--ca", str(secured.ca),
                "--home", str(secured.root / "home-c"))  # fmt: skip
    reused = secured.cli("edge", "enroll", "--server", secured.url, "--token", token_again, "--ca", str(secured.ca),
                         "--home", str(secured.root / "home-d"), check=False)  # fmt: skip
    assert reused.returncode == 6 and "already used, has expired" in reused.stderr  # its login died with it
    # Execute: status before the agent runs
    before = json.loads(secured.cli("edge", "status", "--home", str(homes["board-a"]), "--json").stdout)
    # Assert
    assert before["device_id"] == "board-a" and before["fleet"] == secured.fleet
    assert before["broker_reachable"] and before["broker_authenticated"] and before["signed"]
    assert before["agent_running"] is False
    assert before["classes"] == "0,1,2,3,4,5,6,7,8,9"  # the fleet's class list, from the enrollment reply
    assert before["requires"].startswith("batch >= 8; steps >= 2") and "secure" not in before["requires"]
    # Execute: the agents take part in a round
    for name, home in homes.items():
        secured.group.start(name, "-m", "edge_agent", "run", "--home", str(home), "--status-interval", "0.5")
    journal = JournalReader(secured.state)
    wait_for(lambda: (r := journal.round(1)) is not None and r.closed is not None, 240,
             "round 1 to close")  # fmt: skip
    # Assert
    assert journal.round(1).accepted == 2  # type: ignore[union-attr]

    def accepted_status() -> dict[str, object] | None:
        status = json.loads(secured.cli("edge", "status", "--home", str(homes["board-a"]), "--json").stdout)
        return status if status["last_outcome"] == "accepted" else None

    status = wait_for(accepted_status, 30, "board-a's status to show the accepted round")
    assert status["last_round"] == 1 and status["agent_running"] and status["local_samples"] > 0
    assert status["model_held"] and status["pending_update_round"] is None and status["agent_rss_mb"] > 0
    listing = json.loads(secured.cli("server", "devices", "list", "--state-dir", str(secured.state), "--json").stdout)
    rows = {row["device_id"]: row for row in listing["devices"]}
    assert set(rows) == {"board-a", "board-b", "board-c"}  # board-c enrolled, never ran
    assert all(rows[d]["rounds"] == 1 and rows[d]["online"] and not rows[d]["revoked"]
               and rows[d]["last_update_norm"] > 0 for d in ("board-a", "board-b"))  # fmt: skip
    assert rows["board-c"]["rounds"] == 0 and not rows["board-c"]["online"]
    # Assert: no secret in any log
    secrets = [secured.secret("server.password"), token_again.split(":")[-2], token_again.split(":")[-1]]
    secrets += [secured.login(home)[1] for home in homes.values()]
    for log_name in ("server", "board-a", "board-b"):
        text = secured.group.log(log_name)
        assert not any(secret in text for secret in secrets), log_name


def test_acls_confine_devices_and_the_enrollment_user(secured: SecuredFleet) -> None:
    # Prepare: two enrolled boards (no agents), an operator's read-only login as the observer
    secured.serve("--rounds", "1", "--min-devices", "5")
    user_a, password_a = secured.login(secured.enroll("a"))
    user_b, password_b = secured.login(secured.enroll("b"))
    root = f"genfl/{secured.fleet}"
    pending = EnrollmentToken.parse(secured.token("c"))  # a pending token's own login
    server = secured.observer()
    a = secured.client("a-attacker", user_a, password_a)
    b = secured.client("b-honest", user_b, password_b)
    enroller = secured.client(pending.enroll_user, pending.enroll_user, pending.enroll_password)
    seen_by = {name: collect(t) for name, t in (("server", server), ("a", a), ("b", b), ("enroll", enroller))}
    server.subscribe(f"{root}/#")
    b.subscribe(f"{root}/devices/b/task")
    for spy in (a, enroller):
        for topic_filter in (f"{root}/devices/b/task", f"{root}/devices/+/task", f"{root}/#", "#"):
            spy.subscribe(topic_filter)
    pump(0.5, server, a, b, enroller)
    # Execute
    server.publish(f"{root}/devices/b/task", b"for b only")
    a.publish(f"{root}/devices/b/update", b"a forging b")
    a.publish(f"{root}/devices/b/state", b"a forging b's state")
    enroller.publish(f"{root}/devices/a/update", b"enroller forging a")
    enroller.publish(f"{root}/enroll/other-client/request", b"enroller on another client's topic")
    a.publish(f"{root}/devices/a/update", b"a on its own topic")  # the controls: these do arrive
    enroller.publish(f"{root}/enroll/{pending.enroll_user}/request", b"enroller on its own topic")
    pump(2.0, server, a, b, enroller)
    # Assert
    payloads = {name: [p for _, p in got] for name, got in seen_by.items()}
    assert b"for b only" in payloads["b"]
    assert payloads["a"] == [] and payloads["enroll"] == []
    assert b"a on its own topic" in payloads["server"] and b"enroller on its own topic" in payloads["server"]
    for forged in (
        b"a forging b",
        b"a forging b's state",
        b"enroller forging a",
        b"enroller on another client's topic",
    ):
        assert forged not in payloads["server"], forged
    for transport in (server, a, b, enroller):
        transport.close()
    # Execute + Assert: logins
    with pytest.raises(BrokerRefused):
        secured.client("a-with-b-password", user_a, password_b)
    with pytest.raises(BrokerRefused):
        secured.client("anonymous", None, None)
    with pytest.raises(BrokerRefused):
        secured.client("guesser", "c", "not-a-password")


# paho 2.x does not close its SSL socket when the handshake fails (the socket is local to its
# _ssl_wrap_socket); the garbage collector closes it later with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_refuses_plain_mqtt_and_an_unpinned_server_certificate(secured: SecuredFleet, tmp_path: Path) -> None:
    secured.serve("--rounds", "1", "--min-devices", "5")
    user, password = secured.login(secured.enroll("a"))
    plain = MqttTransport(BrokerAddress("127.0.0.1", secured.port), "plain", username=user, password=password)
    with pytest.raises(TransportError) as plain_error:
        plain.connect(timeout_s=5)
    assert not isinstance(plain_error.value, BrokerRefused)
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(new_ca("someone-else").certificate_pem())
    with pytest.raises(TransportError, match="does not verify against the pinned CA"):
        secured.client("unpinned", user, password, ca=other_ca)
    token = secured.cli("server", "devices", "add", "b", "--state-dir", str(secured.state)).stdout.strip()
    refused = secured.cli("edge", "enroll", "--server", secured.url, "--token", token, "--ca", str(other_ca),
                          "--home", str(tmp_path / "home-b"), check=False)  # fmt: skip
    assert refused.returncode == 5 and "pinned CA" in refused.stderr
    assert not (tmp_path / "home-b" / "edge.toml").exists()


def test_forged_and_replayed_updates_are_counted_and_a_revoked_device_is_cut_off(secured: SecuredFleet) -> None:
    # Prepare: two boards train round 1; the server's login watches a's updates
    secured.serve("--rounds", "2", "--min-devices", "2", "--local-epochs", "1", "--round-timeout", "300")
    homes = {name: secured.enroll(name) for name in ("a", "b")}
    root = f"genfl/{secured.fleet}"
    observer = secured.observer()
    a_updates: list[bytes] = []
    observer.set_handler(lambda topic, payload: a_updates.append(payload))
    observer.subscribe(f"{root}/devices/a/update")
    pump(0.3, observer)
    for name, home in homes.items():
        secured.group.start(name, "-m", "edge_agent", "run", "--home", str(home))
    journal = JournalReader(secured.state)
    while not _closed(journal, 1):
        pump(0.2, observer)
        assert secured.group.running["server"].poll() is None, secured.group.log("server")[-3000:]
    pump(0.3, observer)
    a_key = _server_view_key(homes["a"])
    # (the update topic also carries a's "still training" frames: take its update)
    a_updates = [f for f in a_updates if decode_message(verify_frame(secured.fleet, f, a_key)).TYPE == "update"]
    assert a_updates, "a's round 1 update was not seen"
    # Execute: as a (its own valid login), a forged update and a replay of a's round-1 update
    user_a, password_a = secured.login(homes["a"])
    attacker = secured.client("a-attacker", user_a, password_a)
    inner = verify_frame(secured.fleet, a_updates[0], a_key)
    attacker.publish(f"{root}/devices/a/update", sign_frame(secured.fleet, inner, generate_signing_key()))
    attacker.publish(f"{root}/devices/a/update", a_updates[0])
    attacker.close()
    # Execute: b is revoked
    revoked = secured.cli("server", "devices", "revoke", "b", "--state-dir", str(secured.state))
    assert "b: revoked" in revoked.stdout
    # Assert

    def counted() -> dict[str, int] | None:
        rejected = journal.rejected()
        return rejected if rejected.get("bad-signature") and rejected.get("replay") else None

    rejected = wait_for(counted, 30, "the forged and the replayed update to be counted")
    assert rejected["bad-signature"] == 1 and rejected["replay"] == 1
    user_b, password_b = secured.login(homes["b"])
    with pytest.raises(BrokerRefused):
        secured.client("b-again", user_b, password_b)
    wait_for(lambda: _closed(journal, 2), 240, "round 2 to close")
    assert [u.device_id for u in journal.updates(2)] == ["a"]
    assert [(f.device_id, f.reason) for f in journal.failures(2)] == [("b", "revoked")]
    wait_for(lambda: "lost the broker" in secured.group.log("b"), 10, "the broker to drop b's session")
    listing = json.loads(secured.cli("server", "devices", "list", "--state-dir", str(secured.state), "--json").stdout)
    assert {r["device_id"]: r["revoked"] for r in listing["devices"]} == {"a": False, "b": True}
    observer.close()


def _server_view_key(home: Path):  # type: ignore[no-untyped-def]
    """a's public key, as the server holds it (from a's private key file)."""
    from protocol import load_signing_key

    return load_signing_key(home / "device.key").public_key()


def _closed(journal: JournalReader, number: int) -> bool:
    row = journal.round(number)
    return row is not None and row.closed is not None

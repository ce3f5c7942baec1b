"""A secured fleet against a real Mosquitto started with the config `genfl-server broker-config` writes.

Each test starts its own broker on a free port (TLS, password file, ACL), a
real `genfl-server serve`, and enrolls boards with the real `genfl-edge enroll`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_server._broker import free_port
from cloud_server._pki import new_ca
from edge_agent._daemon import load_agent_config
from protocol import (
    BrokerAddress,
    BrokerRefused,
    MqttTransport,
    TransportError,
    generate_signing_key,
    sign_frame,
    verify_frame,
)
from tests.system._helpers import ENV, Processes, processes, query, wait_for


@dataclass
class SecuredFleet:
    root: Path
    fleet: str
    port: int
    group: Processes

    @property
    def state(self) -> Path:
        return self.root / "server"

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.root / "broker" / "ca.crt"

    def cli(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        module = "cloud_server" if program == "server" else "edge_agent"
        done = subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV, timeout=120
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{program} {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done

    def serve(self, *extra: str) -> None:
        self.group.start("server", "-m", "cloud_server", "serve", "--state-dir", str(self.state), *extra)
        wait_for(lambda: "serving fleet" in self.group.log("server"), 60, "the server to connect")

    def enroll(self, name: str) -> Path:
        token = self.cli("server", "devices", "add", name, "--state-dir", str(self.state)).stdout.strip()
        home = self.root / f"home-{name}"
        self.cli("edge", "enroll", "--server", self.url, "--token", token, "--ca", str(self.ca), "--home", str(home))
        return home

    def login(self, home: Path) -> tuple[str, str]:
        settings = load_agent_config(home / "edge.toml", {})
        assert settings.username is not None and settings.password is not None
        return settings.username, settings.password

    def secret(self, name: str) -> str:
        return (self.state / "security" / name).read_text().strip()

    def client(self, name: str, username: str | None, password: str | None, ca: Path | None = None) -> MqttTransport:
        transport = MqttTransport(
            BrokerAddress.parse(self.url), f"{name}-{os.getpid()}", username=username, password=password,
            ca_file=ca or self.ca, session_expiry_s=0,
        )  # fmt: skip
        transport.connect(timeout_s=10)
        return transport


@pytest.fixture
def secured(tmp_path: Path, fleet: str) -> Iterator[SecuredFleet]:
    mosquitto = shutil.which("mosquitto")
    if mosquitto is None:
        if os.environ.get("GENFL_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("no mosquitto on PATH, and GENFL_REQUIRE_MOSQUITTO=1")
        pytest.skip("no mosquitto on PATH; GENFL_REQUIRE_MOSQUITTO=1 makes this a failure")
    with processes(tmp_path) as group:
        setup = SecuredFleet(tmp_path, fleet, free_port(), group)
        setup.cli(
            "server", "broker-config", "--out", str(tmp_path / "broker"), "--host", "127.0.0.1",
            "--port", str(setup.port), "--state-dir", str(setup.state), "--fleet", fleet,
        )  # fmt: skip
        log = open(tmp_path / "mosquitto.log", "ab")  # noqa: SIM115 - closed right after the start
        broker = subprocess.Popen([mosquitto, "-c", str(tmp_path / "broker" / "mosquitto.conf")], stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        log.close()
        group.running["mosquitto"] = broker
        wait_for(lambda: (tmp_path / "broker" / "mosquitto.pid").exists(), 20, "mosquitto to start")
        time.sleep(0.3)
        yield setup


def _collect(transport: MqttTransport) -> list[tuple[str, bytes]]:
    received: list[tuple[str, bytes]] = []
    transport.set_handler(lambda topic, payload: received.append((topic, payload)))
    return received


def _pump(seconds: float, *transports: MqttTransport) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for transport in transports:
            transport.poll(0.02)


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
    assert reused.returncode != 0 and "already used" in reused.stderr
    # Execute: status before the agent runs
    before = json.loads(secured.cli("edge", "status", "--home", str(homes["board-a"]), "--json").stdout)
    # Assert
    assert before["device_id"] == "board-a" and before["fleet"] == secured.fleet
    assert before["broker_reachable"] and before["broker_authenticated"] and before["signed"]
    assert before["agent_running"] is False
    # Execute: the agents take part in a round
    for name, home in homes.items():
        secured.group.start(name, "-m", "edge_agent", "run", "--home", str(home), "--status-interval", "0.5")
    db = secured.state / "state.sqlite3"
    wait_for(lambda: query(db, "SELECT accepted FROM rounds WHERE round = 1 AND closed IS NOT NULL"), 240,
             "round 1 to close")  # fmt: skip
    # Assert
    assert query(db, "SELECT accepted FROM rounds WHERE round = 1") == [(2,)]

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
    secrets = [secured.secret("server.password"), secured.secret("enroll.password"), token_again.split(":")[-1]]
    secrets += [secured.login(home)[1] for home in homes.values()]
    for log_name in ("server", "board-a", "board-b"):
        text = secured.group.log(log_name)
        assert not any(secret in text for secret in secrets), log_name


def test_acls_confine_devices_and_the_enrollment_user(secured: SecuredFleet) -> None:
    # Prepare: two enrolled boards (no agents), the server's own login as the observer
    secured.serve("--rounds", "1", "--min-devices", "5")
    user_a, password_a = secured.login(secured.enroll("a"))
    user_b, password_b = secured.login(secured.enroll("b"))
    root = f"genfl/{secured.fleet}"
    server = secured.client("observer", "genfl-server", secured.secret("server.password"))
    a = secured.client("a-attacker", user_a, password_a)
    b = secured.client("b-honest", user_b, password_b)
    enroller = secured.client("enroller", "genfl-enroll", secured.secret("enroll.password"))
    seen_by = {name: _collect(t) for name, t in (("server", server), ("a", a), ("b", b), ("enroll", enroller))}
    server.subscribe(f"{root}/#")
    b.subscribe(f"{root}/devices/b/task")
    for spy in (a, enroller):
        for topic_filter in (f"{root}/devices/b/task", f"{root}/devices/+/task", f"{root}/#", "#"):
            spy.subscribe(topic_filter)
    _pump(0.5, server, a, b, enroller)
    # Execute
    server.publish(f"{root}/devices/b/task", b"for b only")
    a.publish(f"{root}/devices/b/update", b"a forging b")
    a.publish(f"{root}/devices/b/state", b"a forging b's state")
    enroller.publish(f"{root}/devices/a/update", b"enroller forging a")
    enroller.publish(f"{root}/enroll/other-client/request", b"enroller on another client's topic")
    a.publish(f"{root}/devices/a/update", b"a on its own topic")  # the controls: these do arrive
    enroller.publish(f"{root}/enroll/{enroller.client_id}/request", b"enroller on its own topic")
    _pump(2.0, server, a, b, enroller)
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
    observer = secured.client("observer", "genfl-server", secured.secret("server.password"))
    a_updates: list[bytes] = []
    observer.set_handler(lambda topic, payload: a_updates.append(payload))
    observer.subscribe(f"{root}/devices/a/update")
    _pump(0.3, observer)
    for name, home in homes.items():
        secured.group.start(name, "-m", "edge_agent", "run", "--home", str(home))
    db = secured.state / "state.sqlite3"
    while not query(db, "SELECT 1 FROM rounds WHERE round = 1 AND closed IS NOT NULL"):
        _pump(0.2, observer)
        assert secured.group.running["server"].poll() is None, secured.group.log("server")[-3000:]
    _pump(0.3, observer)
    assert a_updates, "a's round 1 update was not seen"
    # Execute: as a (its own valid login), a forged update and a replay of a's round-1 update
    user_a, password_a = secured.login(homes["a"])
    attacker = secured.client("a-attacker", user_a, password_a)
    inner = verify_frame(secured.fleet, a_updates[0], _server_view_key(homes["a"]))
    attacker.publish(f"{root}/devices/a/update", sign_frame(secured.fleet, inner, generate_signing_key()))
    attacker.publish(f"{root}/devices/a/update", a_updates[0])
    attacker.close()
    # Execute: b is revoked
    revoked = secured.cli("server", "devices", "revoke", "b", "--state-dir", str(secured.state))
    assert "revoked b" in revoked.stdout
    # Assert

    def counted() -> dict[str, int] | None:
        rejected = dict(query(db, "SELECT reason, count FROM rejected"))
        return rejected if rejected.get("bad-signature") and rejected.get("replay") else None

    rejected = wait_for(counted, 30, "the forged and the replayed update to be counted")
    assert rejected["bad-signature"] == 1 and rejected["replay"] == 1
    user_b, password_b = secured.login(homes["b"])
    with pytest.raises(BrokerRefused):
        secured.client("b-again", user_b, password_b)
    wait_for(lambda: query(db, "SELECT 1 FROM rounds WHERE round = 2 AND closed IS NOT NULL"), 240, "round 2 to close")
    assert query(db, "SELECT device_id FROM updates WHERE round = 2") == [("a",)]
    assert query(db, "SELECT reason FROM failures WHERE round = 2 AND device_id = 'b'") == [("revoked",)]
    wait_for(lambda: "lost the broker" in secured.group.log("b"), 10, "the broker to drop b's session")
    listing = json.loads(secured.cli("server", "devices", "list", "--state-dir", str(secured.state), "--json").stdout)
    assert {r["device_id"]: r["revoked"] for r in listing["devices"]} == {"a": False, "b": True}
    observer.close()


def _server_view_key(home: Path):  # type: ignore[no-untyped-def]
    """a's public key, as the server holds it (from a's private key file)."""
    from protocol import load_signing_key

    return load_signing_key(home / "device.key").public_key()

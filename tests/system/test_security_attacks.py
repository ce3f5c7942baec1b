"""What an enrolled device, a holder of an old token, or the broker's own user can do to a secured fleet:
nothing that stops, steers or spies on it. Each test runs its own Mosquitto (the config broker-config writes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cloud_server.rounds._journal_reader import JournalReader
from edge_agent._daemon import load_agent_config
from protocol import (
    Ack,
    BrokerRefused,
    EnrollmentToken,
    encode_message,
    load_signing_key,
    sign_frame,
)
from testing import raw_frame
from tests.system._helpers import ENV, NOBODY, as_nobody, nobody_python_or_skip, skip_unless_ci, wait_for
from tests.system._secured import SecuredFleet

KILLER_INT = "9" * 5000  # json.loads raises a plain ValueError on it (CPython's integer-digit limit)


_header_frame = raw_frame


def _rejected(secured: SecuredFleet) -> dict[str, int]:
    return JournalReader(secured.state).rejected()


def _refused(secured: SecuredFleet, user: str, password: str) -> bool:
    try:
        secured.client(user, user, password).close()
    except BrokerRefused:
        return True
    return False


def test_no_frame_kills_the_server_and_no_login_takes_its_session(secured: SecuredFleet) -> None:
    # Prepare: a serving fleet with two enrolled boards, a pending token and one that expires at once
    server = secured.serve("--rounds", "1", "--min-devices", "5")
    homes = {name: secured.enroll(name) for name in ("a", "b")}
    used = EnrollmentToken.parse(secured.tokens["a"])
    pending = EnrollmentToken.parse(secured.token("c"))
    expiring = EnrollmentToken.parse(secured.token("x", "--expires", "2s"))
    assert not _refused(secured, expiring.enroll_user, expiring.enroll_password)  # its login works while pending
    root, fleet = f"genfl/{secured.fleet}", secured.fleet
    (user_a, password_a), (user_b, password_b) = secured.login(homes["a"]), secured.login(homes["b"])
    key_a = load_signing_key(homes["a"] / "device.key")
    # Execute: the frames that ended the daemons, retained so that every restart reads them again
    enroller = secured.client(pending.enroll_user, pending.enroll_user, pending.enroll_password)
    request = f'{{"type":"enroll-request","secret":{KILLER_INT},"public_key":"k"}}'.encode()
    enroller.publish(f"{root}/enroll/{pending.enroll_user}/request", request, retain=True)
    enroller.close()
    a = secured.client("a", user_a, password_a)
    state = _header_frame(f'{{"type":"state","device_id":"a","state":"online","num_samples":{KILLER_INT}}}')
    a.publish(f"{root}/devices/a/state", sign_frame(fleet, state, key_a), retain=True)
    a.close()
    # Assert: both counted, the server alive; the expired token's login is gone from the broker
    wait_for(lambda: {"bad-frame", "enroll-bad-frame"} <= set(_rejected(secured)), 30, "the frames to be counted")
    assert server.poll() is None, secured.group.log("server")[-2000:]
    wait_for(lambda: _refused(secured, expiring.enroll_user, expiring.enroll_password), 30, "the login to expire")
    # Execute: the server goes away (its session stays at the broker); a sends three frames meanwhile
    server.send_signal(signal.SIGKILL)
    server.wait()
    a = secured.client("a-again", user_a, password_a)
    wrong_type = sign_frame(fleet, encode_message(Ack(round=1, device_id="a", accepted=True)), key_a)
    for _ in range(3):
        a.publish(f"{root}/devices/a/update", wrong_type)
    a.close()
    # Execute: a used token's login and a device's login ask for the server's client id, and for a's
    assert _refused(secured, used.enroll_user, used.enroll_password)
    with pytest.raises(BrokerRefused):
        secured.client("genfl-server", used.enroll_user, used.enroll_password)
    for client_id in ("genfl-server", "a"):
        thief = secured.client(client_id, user_b, password_b, session_expiry_s=0)  # a clean start
        time.sleep(0.2)
        thief.close()
    # Execute + Assert: the restarted server gets every message queued for it, and serves enrollment
    restarted = secured.serve("--rounds", "1", "--min-devices", "5", name="server-again")
    wait_for(lambda: _rejected(secured).get("unexpected-type") == 3, 30, "the queued frames to arrive")
    home_c = secured.root / "home-c"
    enrolled = subprocess.run(
        [sys.executable, "-m", "edge_agent", "enroll", "--server", secured.url, "--token", "-", "--ca",
         str(secured.ca), "--home", str(home_c)], input=pending.text() + "\n", capture_output=True, text=True,
        env=ENV, timeout=120,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert restarted.poll() is None
    # Assert: a packet larger than the fleet's largest message is refused by the broker
    a = secured.client("a", user_a, password_a)
    a.publish(f"{root}/devices/a/update", b"x" * (5 * 1024 * 1024))
    wait_for(lambda: "oversize packet" in (secured.root / "mosquitto.log").read_text(), 10, "the broker to refuse")
    a.close()


def _mount_read_only(path: Path) -> bool:
    if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode != 0:
        return False
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
    return True


def test_enrollment_is_all_or_nothing_when_the_broker_files_cannot_be_written(secured: SecuredFleet) -> None:
    # Prepare: a token, then the broker's folder read-only (as ProtectSystem=strict leaves it)
    server = secured.serve("--rounds", "1", "--min-devices", "5")
    token_file = secured.root / "token"
    token_file.write_text(secured.token("a"))
    broker = secured.root / "broker"
    if not _mount_read_only(broker):
        skip_unless_ci("a read-only bind mount needs root (CI runs as root)")
    enroll = [sys.executable, "-m", "edge_agent", "enroll", "--server", secured.url, "--token-file", str(token_file),
              "--ca", str(secured.ca), "--home", str(secured.root / "home-a")]  # fmt: skip
    try:
        # Execute
        refused = subprocess.run(enroll, capture_output=True, text=True, env=ENV, timeout=120)
    finally:
        subprocess.run(["umount", str(broker)], check=True)
    # Assert: a clear answer, the server alive, the token still good, nothing registered
    assert refused.returncode == 6 and "try again later" in refused.stderr, refused.stderr
    assert server.poll() is None
    listing = secured.cli("server", "devices", "list", "--state-dir", str(secured.state), "--json").stdout
    assert '"devices": []' in listing and '"pending_tokens": [\n    "a"\n  ]' in listing
    # Execute + Assert: writable again, the same token enrolls
    again = subprocess.run(enroll, capture_output=True, text=True, env=ENV, timeout=120)
    assert again.returncode == 0, again.stderr


@pytest.mark.root
def test_the_boards_service_user_runs_on_what_enroll_wrote_as_root(secured: SecuredFleet) -> None:
    # Prepare: enrolled as root (0600, root-owned), as the README says; the agent will run as another user
    python, env = nobody_python_or_skip("enroll as root, run as another user")
    secured.serve("--rounds", "1", "--min-devices", "1", "--local-epochs", "1", "--round-timeout", "300")
    home = secured.enroll("board")
    assert all((home / name).stat().st_uid == 0 for name in ("edge.toml", "device.key"))
    # Execute: the service user reading root's files directly (what the old unit did) fails clearly
    direct = subprocess.run(as_nobody(python, "-m", "edge_agent", "run", "--config", str(home / "edge.toml")),
                            capture_output=True, text=True, env=env, timeout=60, cwd="/")  # fmt: skip
    assert direct.returncode == 2 and "cannot read the config" in direct.stderr
    # Execute: what the unit does: systemd copies the LoadCredential= files to a folder the service user
    # reads, and StateDirectory= hands it the state folder; the agent takes the config from there
    service = Path(tempfile.mkdtemp(prefix="genfl-service-"))  # where uid nobody can reach (not under pytest's 0700)
    os.chmod(service, 0o711)
    secured.group.cleanup.append(lambda: shutil.rmtree(service, ignore_errors=True))
    credentials, state = service / "credentials", service / "state"
    credentials.mkdir(mode=0o500)
    state.mkdir(mode=0o700)
    for name in ("edge.toml", "device.key", "ca.crt"):
        (credentials / name).write_bytes((home / name).read_bytes())
        os.chmod(credentials / name, 0o400)
        os.chown(credentials / name, NOBODY, NOBODY)
    os.chown(credentials, NOBODY, NOBODY)
    os.chown(state, NOBODY, NOBODY)
    settings = load_agent_config(credentials / "edge.toml", {})
    assert settings.device_key == credentials / "device.key" and settings.ca_file == credentials / "ca.crt"
    log = open(secured.root / "service.log", "wb")  # noqa: SIM115 - closed right after the start
    agent = subprocess.Popen(
        as_nobody(python, "-m", "edge_agent", "run", "--config", str(credentials / "edge.toml"),
                   "--state-dir", str(state)), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=service,
    )  # fmt: skip
    log.close()
    secured.group.running["service"] = agent
    # Assert: it takes part in the signed round
    journal = JournalReader(secured.state)
    wait_for(lambda: (r := journal.round(1)) is not None and r.closed is not None, 240,
             "the service user's round")  # fmt: skip
    assert [u.device_id for u in journal.updates(1)] == ["board"]
    assert (state / "status.json").stat().st_uid == NOBODY

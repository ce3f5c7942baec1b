"""The broker's files, written by root into a folder its own user owns: nothing there can be turned against root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_server._broker_files import BrokerFiles, mosquitto_password_hash
from protocol import GenflError
from tests.system._helpers import skip_unless_ci

NOBODY = 65534

# Run as the broker's user: for as long as it runs, turn every name in the folder into a symlink to the victim.
SWAPPER = """
import os, sys, time
folder, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    for name in ["passwd", "acl"] + os.listdir(folder):
        link = os.path.join(folder, ".swap")
        try:
            os.symlink(victim, link)
            os.replace(link, os.path.join(folder, name))
        except OSError:
            pass
"""


@pytest.fixture
def shared_folders() -> Iterator[tuple[Path, Path]]:
    """A broker folder owned by uid nobody and a root-owned victim file, both where nobody can reach."""
    if os.geteuid() != 0:
        skip_unless_ci("the race needs root writing into another user's folder (CI runs as root)")
    broker = Path(tempfile.mkdtemp(prefix="genfl-broker-"))
    victims = Path(tempfile.mkdtemp(prefix="genfl-victim-"))
    try:
        os.chmod(broker, 0o755)
        os.chown(broker, NOBODY, NOBODY)
        os.chmod(victims, 0o755)
        yield broker, victims
    finally:
        shutil.rmtree(broker, ignore_errors=True)
        shutil.rmtree(victims, ignore_errors=True)


def test_a_broker_user_swapping_in_symlinks_cannot_redirect_a_write_or_a_chown(shared_folders: tuple[Path, Path]):
    # Prepare
    broker, victims = shared_folders
    victim = victims / "shadow"
    victim.write_bytes(b"root's secret\n")
    os.chmod(victim, 0o600)
    files = BrokerFiles(broker, "f")
    swapper = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", sys.executable, "-c", SWAPPER,
         str(broker), str(victim), "20"],
    )  # fmt: skip
    time.sleep(0.3)
    assert swapper.poll() is None, "the swapper could not run as the broker's user"
    writes = failures = 0
    try:
        # Execute: root rewrites the files while the broker's user swaps symlinks in
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            try:
                files.write_users(mosquitto_password_hash("pw"), [("dev", mosquitto_password_hash("d"))], [])
                writes += 1
            except GenflError:  # it owns the folder and may delete our files: a denial, never an escalation
                failures += 1
    finally:
        swapper.kill()
        swapper.wait()
    # Assert: the victim kept its owner, mode and bytes
    info = victim.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 0, 0o600)
    assert victim.read_bytes() == b"root's secret\n"
    assert writes > 50, (writes, failures)


def test_the_broker_is_signalled_only_if_its_pid_file_names_a_mosquitto(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "mosquitto.pid").write_text(str(sleeper.pid))
        with pytest.raises(GenflError, match="not this broker"):
            BrokerFiles(tmp_path, "f").reload()
        assert sleeper.poll() is None  # not sent SIGHUP (which would have ended it)
        (tmp_path / "mosquitto.pid").write_text("1")
        with pytest.raises(GenflError, match="not this broker"):
            BrokerFiles(tmp_path, "f").reload()
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


def test_a_server_that_may_not_write_the_broker_folder_leaves_its_files_for_the_root_sync_to_check_and_install() -> (
    None
):
    # Prepare: a secured fleet whose server runs as its own user (nobody stands in for the unit's dynamic user:
    # systemd hands it the state folder) and whose broker folder belongs to another (root here)
    from cloud_server._security import use_outbox
    from tests.system._helpers import ENV, NOBODY, as_nobody, nobody_python_or_skip

    python, env = nobody_python_or_skip("a server user that may not write the broker's folder")
    service = Path(tempfile.mkdtemp(prefix="genfl-outbox-"))  # where uid nobody can reach
    try:
        os.chmod(service, 0o711)
        state, broker = service / "state", service / "broker"
        subprocess.run([sys.executable, "-m", "cloud_server", "broker-config", "--out", str(broker), "--host",
                        "localhost", "--state-dir", str(state), "--fleet", "plant-3"],
                       check=True, capture_output=True, env=ENV)  # fmt: skip
        use_outbox(state)
        for folder, _, files in os.walk(state):
            for name in [folder, *(os.path.join(folder, f) for f in files)]:
                os.chown(name, NOBODY, NOBODY)
        before = (broker / "passwd").read_bytes()
        # Execute: the server's user issues a token (as serve does at an enrollment)
        added = subprocess.run(as_nobody(python, "-m", "cloud_server", "devices", "add", "press-07",
                                         "--state-dir", str(state)),
                               capture_output=True, text=True, env=env, cwd="/")  # fmt: skip
        outbox = state / "security" / "broker-outbox"
        # what genfl-broker-sync.service runs: its arguments are the unit's, nothing is read from the state's
        # broker.json, which the server's user may rewrite (here: to have root run a command of its choosing)
        sync = [sys.executable, "-m", "cloud_server", "broker-sync", "--outbox", str(outbox), "--broker-dir",
                str(broker), "--fleet", "plant-3"]  # fmt: skip
        marker = service / "root-ran-this"
        (state / "security" / "broker.json").write_text(
            json.dumps(
                {"fleet": "x", "url": "mqtts://h:1", "broker_dir": "/", "reload_command": ["touch", str(marker)]}
            )
        )
        handed = (outbox / "passwd").read_text()
        unchanged = (broker / "passwd").read_bytes()
        synced = subprocess.run(sync,
                                capture_output=True, text=True, env=ENV)  # fmt: skip
        installed = broker / "passwd"
        # Execute: an outbox the server's user turned hostile (a rule for the whole broker; a link to a secret)
        with open(outbox / "acl", "a") as acl:
            acl.write("topic readwrite #\n")
        hostile_rule = subprocess.run(sync,
                                      capture_output=True, text=True, env=ENV)  # fmt: skip
        (outbox / "passwd").unlink()
        (outbox / "passwd").symlink_to(state / "security" / "ca.key")
        hostile_link = subprocess.run(sync,
                                      capture_output=True, text=True, env=ENV)  # fmt: skip
        # Assert: the token's login went to the outbox only; root checked it and installed it as the folder's owner;
        # what is not a password line or a rule of the fleet's tree is refused and the broker keeps its files
        assert added.returncode == 0 and added.stdout.startswith("gfl2:"), added.stderr[-2000:]
        login = added.stdout.split(":")[2]
        assert login in handed
        assert unchanged == before and login.encode() not in unchanged
        assert synced.returncode == 0, synced.stderr
        assert login in installed.read_text()
        assert not marker.exists()
        assert installed.stat().st_uid == broker.stat().st_uid and (installed.stat().st_mode & 0o777) == 0o600
        assert hostile_rule.returncode == 1 and "not a rule of fleet plant-3's ACL" in hostile_rule.stderr
        assert "topic readwrite #" not in (broker / "acl").read_text()
        assert hostile_link.returncode == 1 and "cannot read" in hostile_link.stderr
        assert "BEGIN" not in installed.read_text()
    finally:
        shutil.rmtree(service, ignore_errors=True)

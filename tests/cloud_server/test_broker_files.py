"""The broker's files, written by root into a folder its own user owns: nothing there can be turned against root."""

from __future__ import annotations

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

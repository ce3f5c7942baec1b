"""The broker's files, written by root into a folder its own user owns: nothing there can be turned against root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_server.broker._broker_files import BrokerFiles, mosquitto_password_hash
from protocol import GenflError
from tests.system._helpers import ENV, as_nobody, nobody_python_or_skip, skip_unless_ci

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


@pytest.mark.root
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


# The server's user writes the outbox and waits a second for a sync that never comes.
LATE_SYNC = """
import sys
from pathlib import Path
from cloud_server.broker._broker_files import BrokerFiles, BrokerSyncLate, mosquitto_password_hash
files = BrokerFiles(Path(sys.argv[1]), "plant-3", outbox=Path(sys.argv[2]))
files.write_users(mosquitto_password_hash("x"), [], [])
try:
    files.reload(1.0)
except BrokerSyncLate as exc:
    print(exc)
"""


class PathUnit:
    """genfl-broker-sync.path as systemd runs it: each time the watched file changes, run the sync; a change
    made while the sync runs (here: during it and for ``tail_s`` after it) is not seen."""

    def __init__(self, watched: Path, command: list[str], tail_s: float = 0.0) -> None:
        self.watched, self.command, self.tail_s = watched, command, tail_s
        self.runs: list[subprocess.CompletedProcess[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PathUnit:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _signature(self) -> tuple[int, int] | None:
        try:
            info = self.watched.stat()
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns

    def _watch(self) -> None:
        seen = self._signature()
        while not self._stop.wait(0.05):
            if self._signature() != seen:
                self.runs.append(subprocess.run(self.command, capture_output=True, text=True, env=ENV))
                time.sleep(self.tail_s)
                seen = self._signature()  # what changed meanwhile is lost


@pytest.fixture
def outbox_fleet() -> Iterator[tuple[Path, Path, Path, str, dict[str, str]]]:
    """A secured fleet whose server runs as its own user (nobody stands in for the unit's dynamic user: systemd
    hands it the state folder) and whose broker folder belongs to another (root here): (service folder, state,
    broker folder, nobody's python, its environment)."""
    from cloud_server.fleet._security import use_outbox

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
        yield service, state, broker, python, env
    finally:
        shutil.rmtree(service, ignore_errors=True)


def _sync_command(outbox: Path, broker: Path) -> list[str]:
    """What genfl-broker-sync.service runs: its arguments are the unit's, nothing is read from the state's
    broker.json, which the server's user may rewrite."""
    return [sys.executable, "-m", "cloud_server", "broker-sync", "--outbox", str(outbox), "--broker-dir",
            str(broker), "--fleet", "plant-3"]  # fmt: skip


@pytest.mark.root
def test_a_server_that_may_not_write_the_broker_folder_leaves_its_files_for_the_root_sync_to_check_and_install(
    outbox_fleet: tuple[Path, Path, Path, str, dict[str, str]],
) -> None:
    # Prepare
    service, state, broker, python, env = outbox_fleet
    outbox = state / "security" / "broker-outbox"
    before = (broker / "passwd").read_bytes()
    # Execute: the server's user issues a token (as serve does at an enrollment) and waits for the sync's receipt
    adding = subprocess.Popen(as_nobody(python, "-m", "cloud_server", "devices", "add", "press-07",
                                        "--state-dir", str(state)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")  # fmt: skip
    deadline = time.monotonic() + 60
    while b"enroll-" not in (outbox / "passwd").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    handed = (outbox / "passwd").read_text()
    unchanged = (broker / "passwd").read_bytes()
    sync = _sync_command(outbox, broker)
    marker = service / "root-ran-this"  # broker.json rewritten to have root run a command of its choosing
    (state / "security" / "broker.json").write_text(
        json.dumps({"fleet": "x", "url": "mqtts://h:1", "broker_dir": "/", "reload_command": ["touch", str(marker)]})
    )
    synced = subprocess.run(sync, capture_output=True, text=True, env=ENV)
    added_out, added_err = adding.communicate(timeout=60)
    installed = broker / "passwd"
    receipt = outbox / "installed"
    # Execute: an outbox the server's user turned hostile (a rule for the whole broker; a link to a secret; the
    # outbox itself a link to another folder of valid files, to have root write its receipt there)
    with open(outbox / "acl", "a") as acl:
        acl.write("topic readwrite #\n")
    hostile_rule = subprocess.run(sync, capture_output=True, text=True, env=ENV)
    (outbox / "passwd").unlink()
    (outbox / "passwd").symlink_to(state / "security" / "ca.key")
    hostile_link = subprocess.run(sync, capture_output=True, text=True, env=ENV)
    elsewhere = service / "elsewhere"
    elsewhere.mkdir()
    for name in ("passwd", "acl"):
        shutil.copyfile(broker / name, elsewhere / name)
    shutil.rmtree(outbox)
    outbox.symlink_to(elsewhere)
    hostile_folder = subprocess.run(sync, capture_output=True, text=True, env=ENV)
    # Assert: the token's login went to the outbox only; root checked it, installed it as the folder's owner and
    # left a receipt the server's user can read, which ended its wait; what is not a password line or a rule of the
    # fleet's tree, or not read through plain folders, is refused and the broker keeps its files
    assert adding.returncode == 0 and added_out.startswith("gfl2:"), added_err[-2000:]
    assert "genfl-broker-sync has not installed" not in added_err, added_err  # no broker runs: said so
    login = added_out.split(":")[2]
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
    assert hostile_folder.returncode == 1 and "does not lie under a link" in hostile_folder.stderr
    assert not (elsewhere / "installed").exists() and not receipt.exists()


@pytest.mark.root
def test_a_change_written_while_the_sync_runs_still_reaches_the_broker_and_a_sync_that_never_runs_is_reported(
    outbox_fleet: tuple[Path, Path, Path, str, dict[str, str]],
) -> None:
    # Prepare: the path unit runs the sync on each change of the outbox's ACL, and misses what changes while
    # the sync runs (systemd does not trigger a running unit again)
    _, state, broker, python, env = outbox_fleet
    outbox = state / "security" / "broker-outbox"
    add = [*as_nobody(python, "-m", "cloud_server", "devices", "add"), "--state-dir", str(state)]
    # Execute: with no sync unit at all, the server's user waits a little and says so
    late = subprocess.run(as_nobody(python, "-c", LATE_SYNC, str(broker), str(outbox)), capture_output=True,
                          text=True, env=env, cwd="/", timeout=60)  # fmt: skip
    with PathUnit(outbox / "acl", _sync_command(outbox, broker), tail_s=1.5) as unit:
        first = subprocess.run([*add[:-2], "press-07", *add[-2:]], capture_output=True, text=True, env=env, cwd="/",
                               timeout=120)  # fmt: skip
        started = time.monotonic()
        second = subprocess.run([*add[:-2], "press-08", *add[-2:]], capture_output=True, text=True, env=env, cwd="/",
                                timeout=120)  # fmt: skip
        waited = time.monotonic() - started
    # Assert: each login is in the broker's files when its `devices add` returns: the second one, written while
    # the sync that installed the first was still running, was missed by the path unit and written again
    assert "genfl-broker-sync has not installed the broker files" in late.stdout, (late.stdout, late.stderr)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert "genfl-broker-sync has not installed" not in first.stderr + second.stderr, (first.stderr, second.stderr)
    installed = (broker / "passwd").read_text()
    for added in (first, second):
        assert added.stdout.split(":")[2] in installed
    assert len(unit.runs) >= 2 and all(run.returncode == 0 for run in unit.runs), [r.stderr for r in unit.runs]
    assert waited > 1.5  # it waited out the sync's run, then wrote again

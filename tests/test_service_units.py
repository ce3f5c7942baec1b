"""The systemd units: in sync with the renderers, valid, and well sandboxed (systemd-analyze)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from tools.render_units import UNITS  # noqa: E402


@pytest.mark.parametrize("name", sorted(UNITS))
def test_committed_units_match_the_renderers(name: str) -> None:
    assert (ROOT / "systemd" / name).read_text() == UNITS[name](), "run: python tools/render_units.py"


def _enrolled_root(root: Path) -> Path:
    """A root whose /etc/genfl holds what `genfl-edge enroll` writes (the edge unit loads these)."""
    (root / "etc/genfl").mkdir(parents=True)
    for name in ("edge.toml", "device.key", "ca.crt"):
        (root / "etc/genfl" / name).write_text("x\n")
    return root


def _reachable(path: Path) -> bool:
    from protocol import ConfigError, check_executable_reachable

    try:
        check_executable_reachable(path)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(("script", "unit", "limit"), [("genfl-edge", "genfl-edge.service", 2.0),
                                                      ("genfl-server", "genfl-server.service", 3.5)])  # fmt: skip
def test_installed_unit_verifies_and_scores_within_the_limit(
    tmp_path: Path, script: str, unit: str, limit: float
) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is part of this machine kind"
    # Execute: install under a root, as a user would on a board (verify needs an executable that exists where
    # the unit says: /usr/bin/env stands in for an installed package)
    root = _enrolled_root(tmp_path)
    done = subprocess.run([BIN / script, "install-service", "--root", str(root), "--executable", "/usr/bin/env"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = root / "etc/systemd/system" / unit
    assert "ExecStart=/usr/bin/env " in path.read_text()
    assert "systemctl enable --now" in done.stdout
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(path)], capture_output=True, text=True
    )
    # Assert
    assert verify.returncode == 0, verify.stderr
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout).group(1))  # type: ignore[union-attr]
    assert score <= limit
    removed = subprocess.run([BIN / script, "uninstall-service", "--root", str(root)], capture_output=True, text=True)
    assert removed.returncode == 0 and not path.exists() and removed.stdout.startswith("removed ")
    again = subprocess.run([BIN / script, "uninstall-service", "--root", str(root)], capture_output=True, text=True)
    assert again.returncode == 0 and "nothing was removed" in again.stdout


@pytest.mark.parametrize("script", ["genfl-edge", "genfl-server"])
def test_the_default_executable_is_this_install_unless_the_service_cannot_reach_it(tmp_path: Path, script: str) -> None:
    root = _enrolled_root(tmp_path)
    done = subprocess.run([BIN / script, "install-service", "--root", str(root)], capture_output=True, text=True)
    if _reachable(BIN / script):
        assert done.returncode == 0, done.stderr
        assert f"ExecStart={BIN / script} " in (root / "etc/systemd/system" / f"{script}.service").read_text()
    else:  # this checkout lives under /tmp or a home folder: refused, with the reason
        assert done.returncode == 2 and "out of the service's reach" in done.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["genfl-server", "--executable", "/tmp/x/.venv/bin/genfl-server"], "PrivateTmp=yes"),
        (["genfl-edge", "--executable", "/home/op/.venv/bin/genfl-edge"], "ProtectHome=yes"),
        (["genfl-edge", "--executable", "/usr/bin/env", "--data", "folder:/tmp/images"], "the data /tmp/images"),
        (["genfl-server", "--executable", "/usr/bin/env", "--broker-dir", "/root/broker"], "the broker folder"),
    ],
)  # fmt: skip
def test_paths_the_hardened_service_cannot_reach_are_refused(tmp_path: Path, args: list[str], reason: str) -> None:
    root = _enrolled_root(tmp_path)
    done = subprocess.run([BIN / args[0], "install-service", "--root", str(root), *args[1:]],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and reason in done.stderr and "out of the service's reach" in done.stderr
    assert not (root / "etc/systemd/system").exists()


def test_an_edge_unit_before_enrollment_is_refused_and_after_it_loads_the_credentials(tmp_path: Path) -> None:
    before = subprocess.run([BIN / "genfl-edge", "install-service", "--root", str(tmp_path), "--executable",
                             "/usr/bin/env"], capture_output=True, text=True)  # fmt: skip
    assert before.returncode == 2 and "enroll first" in before.stderr
    _enrolled_root(tmp_path)
    after = subprocess.run([BIN / "genfl-edge", "install-service", "--root", str(tmp_path), "--executable",
                            "/usr/bin/env"], capture_output=True, text=True)  # fmt: skip
    text = (tmp_path / "etc/systemd/system/genfl-edge.service").read_text()
    assert after.returncode == 0 and "LoadCredential=device.key:/etc/genfl/device.key" in text
    assert "LoadCredential=ca.crt:/etc/genfl/ca.crt" in text


def test_the_gpu_unit_allows_every_nvidia_gpu(tmp_path: Path) -> None:
    done = subprocess.run([BIN / "genfl-server", "install-service", "--root", str(tmp_path), "--gpu", "--executable",
                           "/usr/bin/env"], capture_output=True, text=True)  # fmt: skip
    text = (tmp_path / "etc/systemd/system/genfl-server.service").read_text()
    assert done.returncode == 0 and "DeviceAllow=char-nvidia-frontend rw" in text
    assert "DeviceAllow=/dev/nvidia0" not in text
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "etc/systemd/system/genfl-server.service")],
                            capture_output=True, text=True)  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def test_edge_unit_takes_data_and_user(tmp_path: Path) -> None:
    root = _enrolled_root(tmp_path)
    done = subprocess.run(
        [BIN / "genfl-edge", "install-service", "--root", str(root), "--data", "folder:/srv/genfl/data",
         "--user", "genfl", "--executable", "/usr/bin/env"], capture_output=True, text=True,
    )  # fmt: skip
    text = (root / "etc/systemd/system/genfl-edge.service").read_text()
    assert done.returncode == 0, done.stderr
    assert "--data folder:/srv/genfl/data" in text and "ReadOnlyPaths=/srv/genfl/data" in text
    assert "User=genfl" in text and "DynamicUser" not in text
    bad = subprocess.run([BIN / "genfl-edge", "install-service", "--root", str(root), "--data", "folder:rel",
                          "--executable", "/usr/bin/env"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "absolute path" in bad.stderr


def test_a_secured_servers_unit_never_runs_as_the_brokers_user_and_a_root_unit_installs_its_broker_files(
    tmp_path: Path,
) -> None:
    # Prepare: a secured fleet's state and broker folder (owned by the broker's user when there is one), as
    # broker-config writes them under a root
    broker_user = "mosquitto" if _has_user("mosquitto") else None
    setup = [BIN / "genfl-server", "broker-config", "--out", str(tmp_path / "etc/genfl/broker"), "--host", "localhost",
             "--state-dir", str(tmp_path / "var/lib/genfl-server"), "--fleet", "plant-3"]  # fmt: skip
    subprocess.run(setup + (["--broker-user", broker_user] if broker_user else []), check=True, capture_output=True)
    install = [BIN / "genfl-server", "install-service", "--root", str(tmp_path), "--broker-dir", "/etc/genfl/broker",
               "--executable", "/usr/bin/env"]  # fmt: skip
    owner = broker_user or "root"
    # Execute
    as_owner = subprocess.run([*install, "--user", owner], capture_output=True, text=True)
    done = subprocess.run(install, capture_output=True, text=True)
    # Assert: the broker's user is refused; the server runs as its own user, writes nothing outside its state,
    # and the root pair watches its outbox and installs it
    assert as_owner.returncode == 2 and "its CA and signing keys" in as_owner.stderr, as_owner.stderr
    assert done.returncode == 0, done.stderr
    units = tmp_path / "etc/systemd/system"
    server = (units / "genfl-server.service").read_text()
    assert "DynamicUser=yes" in server and "User=" not in server.replace("DynamicUser=", "")
    assert "ReadWritePaths=" not in server
    # the dynamic user's real state folder (systemd links /var/lib/genfl-server to it; the sync follows no link)
    watched = "PathChanged=/var/lib/private/genfl-server/security/broker-outbox/acl"
    assert watched in (units / "genfl-broker-sync.path").read_text()
    sync = (units / "genfl-broker-sync.service").read_text()
    outbox = "/var/lib/private/genfl-server/security/broker-outbox"
    assert (
        f"ExecStart=/usr/bin/env broker-sync --outbox {outbox} --broker-dir /etc/genfl/broker --fleet plant-3" in sync
    )
    assert "ReadWritePaths=/etc/genfl/broker" in sync
    assert "enable --now genfl-server.service genfl-broker-sync.path" in done.stdout
    assert (tmp_path / "var/lib/genfl-server/security/broker-outbox/acl").is_file()
    for name in ("genfl-server.service", "genfl-broker-sync.path", "genfl-broker-sync.service"):
        verify = subprocess.run(["systemd-analyze", "verify", str(units / name)], capture_output=True, text=True)
        assert verify.returncode == 0, (name, verify.stderr)
    removed = subprocess.run([BIN / "genfl-server", "uninstall-service", "--root", str(tmp_path)],
                             capture_output=True, text=True)  # fmt: skip
    assert removed.stdout.count("removed ") == 3 and not any(units.iterdir())


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_an_executable_whose_interpreter_the_service_cannot_reach_is_refused(tmp_path: Path) -> None:
    # Prepare: a console script where the unit can see it, whose #! names a Python in root's home (a virtual
    # environment made from a pyenv Python links there)
    import tempfile

    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else "/var/lib"))
    try:
        script = folder / "genfl-edge"
        script.write_text("#!/root/.pyenv/versions/3.11.7/bin/python3\nimport sys\n")
        script.chmod(0o755)
        root = _enrolled_root(tmp_path)
        # Execute
        done = subprocess.run([BIN / "genfl-edge", "install-service", "--root", str(root), "--executable",
                               str(script)], capture_output=True, text=True)  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Assert: refused, naming the interpreter and why
    assert done.returncode == 2, done.stdout
    assert f"the interpreter of {script}" in done.stderr and "ProtectHome=yes" in done.stderr
    assert not (root / "etc/systemd/system").exists()


@pytest.mark.parametrize(
    ("form", "refused"),
    [
        ("pip's /bin/sh trampoline (a #! line too long)", "the interpreter of"),
        ("a venv made with --copies from a Python in /root", "the environment of"),
        ("#!/usr/bin/env python3, found on the service's PATH", ""),
    ],
)
def test_every_way_a_script_names_its_interpreter_is_followed(form: str, refused: str) -> None:
    # Prepare: a console script where the unit can see it, naming its Python the way `form` says
    import tempfile

    from protocol import ConfigError, check_executable_reachable

    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else "/var/lib"))
    try:
        script = folder / "genfl-edge"
        if form.startswith("pip"):
            script.write_text("#!/bin/sh\n'''exec' \"/root/.pyenv/versions/3.11.7/bin/python3\" \"$0\" \"$@\"\n' '''\n")
        elif form.startswith("a venv"):
            (folder / "venv/bin").mkdir(parents=True)
            (folder / "venv/bin/python").write_bytes(b"\x7fELF")  # a copy, not a link
            (folder / "venv/pyvenv.cfg").write_text("home = /root/.pyenv/versions/3.11.7/bin\ninclude-system = false\n")
            script.write_text(f"#!{folder}/venv/bin/python\nimport sys\n")
        else:
            script.write_text("#!/usr/bin/env python3\nimport sys\n")
        # Execute
        try:
            check_executable_reachable(script)
            error = ""
        except ConfigError as exc:
            error = str(exc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Assert: the Python out of reach is named, with why; one the service reaches passes
    if refused:
        assert refused in error and "ProtectHome=yes" in error, error
    else:
        assert error == ""

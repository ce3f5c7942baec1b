import socket
from pathlib import Path

import pytest

from protocol import ConfigError, Notifier, install_unit, uninstall_unit


def _listen(tmp_path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    server.settimeout(2)
    return server


def test_notifier_speaks_the_sd_notify_protocol(tmp_path: Path) -> None:
    server = _listen(tmp_path)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"})
    notifier.ready("idle")
    notifier.status("idle")  # unchanged: not sent again
    notifier.status("training round 3")
    notifier.watchdog()
    notifier.watchdog()  # within half the interval: not sent again
    notifier.stopping()
    got = [server.recv(4096).decode() for _ in range(4)]
    server.close()
    notifier.close()
    assert got == ["READY=1\nSTATUS=idle", "STATUS=training round 3", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]


def test_notifier_is_a_no_op_without_systemd() -> None:
    notifier = Notifier({})
    notifier.ready("idle")
    notifier.watchdog()
    assert not notifier.enabled


def test_install_and_uninstall_under_a_root(tmp_path: Path) -> None:
    done = install_unit(tmp_path, "x.service", "[Service]\nExecStart=/bin/true\n")
    assert done.path == tmp_path / "etc/systemd/system/x.service"
    assert done.path.read_text().startswith("[Service]")
    assert ["systemctl", "enable", "--now", "x.service"] in done.commands
    uninstall_unit(tmp_path, "x.service")
    assert not done.path.exists()
    with pytest.raises(ConfigError, match="--now only works with --root /"):
        install_unit(tmp_path, "y.service", "", now=True)
    assert not (tmp_path / "etc/systemd/system/y.service").exists()

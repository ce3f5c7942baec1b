"""Fixtures of the system tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_server.broker._broker import free_port
from tests.system._helpers import processes, skip_unless_ci, wait_for
from tests.system._secured import SecuredFleet


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def secured(tmp_path: Path, fleet: str) -> Iterator[SecuredFleet]:
    mosquitto = shutil.which("mosquitto")
    if mosquitto is None:
        skip_unless_ci("no mosquitto on PATH")
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
        wait_for(lambda: _accepts(setup.port), 20, "mosquitto to listen")
        yield setup

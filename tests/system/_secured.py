"""A secured fleet for system tests: its own Mosquitto on a free port, with the config `broker-config` writes.

The ``secured`` fixture (conftest.py) starts the broker (TLS, password file, ACL);
a test then starts a real `genfl-server serve` and enrolls boards with the real
`genfl-edge enroll`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cloud_server.broker._broker_files import mosquitto_password_hash
from edge_agent._daemon import load_agent_config
from protocol import BrokerAddress, MqttTransport
from tests.system._helpers import ENV, FAST_TRAINING, Processes, wait_for


@dataclass
class SecuredFleet:
    root: Path
    fleet: str
    port: int
    group: Processes
    tokens: dict[str, str] = field(default_factory=dict)  # the token each enroll() used

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

    def serve(self, *extra: str, name: str = "server") -> subprocess.Popen[bytes]:
        process = self.group.start(name, "-m", "cloud_server", "serve", "--state-dir", str(self.state),
                                   *FAST_TRAINING, *extra)  # fmt: skip
        wait_for(lambda: "serving fleet" in self.group.log(name), 60, "the server to connect")
        return process

    def token(self, name: str, *extra: str) -> str:
        return self.cli("server", "devices", "add", name, "--state-dir", str(self.state), *extra).stdout.strip()

    def enroll(self, name: str) -> Path:
        token_file = self.root / f"token-{name}"
        self.tokens[name] = self.token(name)
        token_file.write_text(self.tokens[name] + "\n")
        home = self.root / f"home-{name}"
        self.cli("edge", "enroll", "--server", self.url, "--token-file", str(token_file), "--ca", str(self.ca),
                 "--home", str(home))  # fmt: skip
        return home

    def login(self, home: Path) -> tuple[str, str]:
        settings = load_agent_config(home / "edge.toml", {})
        assert settings.username is not None and settings.password is not None
        return settings.username, settings.password

    def observer(self) -> MqttTransport:
        """An operator's login with the server's rights on the fleet's tree, added to the broker's files by
        hand (the server's own login would take over the server's session: the broker makes every client
        id its user name)."""
        broker = self.root / "broker"
        with open(broker / "passwd", "a") as passwd:
            passwd.write(f"observer:{mosquitto_password_hash('observer-pw')}\n")
        with open(broker / "acl", "a") as acl:
            acl.write(f"\nuser observer\ntopic readwrite genfl/{self.fleet}/#\n")
        os.kill(int((broker / "mosquitto.pid").read_text()), signal.SIGHUP)
        time.sleep(0.5)
        return self.client("observer", "observer", "observer-pw")

    def secret(self, name: str) -> str:
        return (self.state / "security" / name).read_text().strip()

    def client(self, name: str, username: str | None, password: str | None, ca: Path | None = None,
               session_expiry_s: int = 0) -> MqttTransport:  # fmt: skip
        transport = MqttTransport(
            BrokerAddress.parse(self.url), name, username=username, password=password,
            ca_file=ca or self.ca, session_expiry_s=session_expiry_s,
        )  # fmt: skip
        transport.connect(timeout_s=10)
        return transport


def collect(transport: MqttTransport) -> list[tuple[str, bytes]]:
    received: list[tuple[str, bytes]] = []
    transport.set_handler(lambda topic, payload: received.append((topic, payload)))
    return received


def pump(seconds: float, *transports: MqttTransport) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for transport in transports:
            transport.poll(0.02)

"""The embedded broker: mosquitto when on PATH, else amqtt in-process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_server import EmbeddedBroker
from protocol import BrokerAddress, MqttTransport
from tests.system._helpers import ENV, processes, skip_unless_ci, wait_for


def _round_trip(url: str) -> list[tuple[str, bytes]]:
    sender = MqttTransport(BrokerAddress.parse(url), "sender", session_expiry_s=0)
    receiver = MqttTransport(BrokerAddress.parse(url), "receiver", session_expiry_s=0)
    got: list[tuple[str, bytes]] = []
    receiver.set_handler(lambda t, p: got.append((t, p)))
    receiver.connect()
    sender.connect()
    try:
        receiver.subscribe("genfl/x/#")
        wait_for(lambda: receiver.connected, 5, "subscription")
        payload = os.urandom(300_000)  # bigger than a chunk
        for _ in range(50):  # the SUBACK may trail the connect: publish until one gets through
            sender.publish("genfl/x/devices/d/state", payload)
            if receiver.poll(0.1):
                break
        return [(t, p) for t, p in got if p == payload][:1]
    finally:
        sender.close()
        receiver.close()


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_embedded_broker_carries_messages(kind: str) -> None:
    if kind == "mosquitto" and shutil.which("mosquitto") is None:
        skip_unless_ci("no mosquitto binary on PATH")
    with EmbeddedBroker(kind=kind) as broker:
        assert broker.kind == kind
        got = _round_trip(broker.url)
    assert [t for t, _ in got] == ["genfl/x/devices/d/state"]


@pytest.mark.slow
def test_serve_without_a_broker_url_starts_one_that_agents_use(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "cloud_server", "serve", "--state-dir", str(tmp_path / "server"), "--rounds", "1",
         "--local-epochs", "1", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, text=True,
    )  # fmt: skip
    with processes(tmp_path) as group:
        try:
            assert server.stdout is not None
            first = server.stdout.readline()
            assert first.startswith("embedded ") and " broker at mqtt://127.0.0.1:" in first
            url = first.split(" broker at ")[1].strip()
            group.agent("dev", "dev-1", "default", url, "digits")
            assert server.wait(timeout=240) == 0  # generous: the other test worker may be busy too
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            assert server.stdout is not None
            server.stdout.close()
    assert (tmp_path / "server" / "checkpoints" / "round-0001.safetensors").is_file()

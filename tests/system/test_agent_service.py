"""The agent as a systemd service would run it: sd_notify, SIGTERM, a broker outage."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import models
from cloud_server import Coordinator, CoordinatorConfig, EmbeddedBroker, FedAvg, SqliteJournal, StrategyConfig
from protocol import BrokerAddress, MqttTransport
from tests.system._helpers import ENV, processes, wait_for


def _status(folder: Path) -> dict:
    path = folder / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _coordinator(fleet: str, url: str, rounds: int, journal: SqliteJournal | None = None):  # type: ignore[no-untyped-def]
    transport = MqttTransport(BrokerAddress.parse(url), f"{fleet}-server-{time.monotonic_ns()}", session_expiry_s=0)
    transport.connect()
    coordinator = Coordinator(
        CoordinatorConfig(fleet=fleet, model_name="cnn-digits", rounds=rounds, min_devices=1, round_timeout_s=120),
        FedAvg(StrategyConfig()),
        transport,
        models.model_state(models.build_model("cnn-digits", seed=0)),
        journal=journal,
    )
    coordinator.start()
    return coordinator, transport


def _pump(coordinator, transport, until, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        transport.poll(0.05)
        coordinator.tick()


def test_agent_reports_ready_status_and_watchdog_and_stays_small(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(1.0)
    env = {**ENV, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    command = [
        sys.executable,
        "-m",
        "edge_agent",
        "run",
        "--device-id",
        "dev-n",
        "--fleet",
        fleet,
        "--broker",
        mosquitto_url,
        "--data",
        "digits",
        "--state-dir",
        str(tmp_path / "agent"),
        "--status-interval",
        "0.5",
    ]
    agent = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 2:
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode())
        idle = wait_for(lambda: (s := _status(tmp_path / "agent")).get("state") == "idle" and s, 10, "an idle status")
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        if agent.poll() is None:
            agent.kill()
        notify.close()
    assert messages[0] == "STATUS=waiting for broker", messages
    assert messages[1] == "READY=1\nSTATUS=idle", messages
    assert "WATCHDOG=1" in messages
    assert any(m.startswith("STOPPING=1") for m in messages)
    assert code == 0
    # The daemon never imports torch: it stays small while idle (the worker does the training).
    assert idle["state"] == "idle" and idle["daemon_rss_mb"] <= 80, idle


def test_sigterm_during_training_keeps_the_update_and_a_restarted_agent_delivers_it(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    coordinator, transport = _coordinator(fleet, mosquitto_url, rounds=1)
    folder = tmp_path / "agent"
    args = ("--status-interval", "0.2", "--stop-grace", "60", "--worker", "per-task")
    with processes(tmp_path) as group:
        try:
            agent = group.agent("agent", "dev-s", fleet, mosquitto_url, "digits", *args)
            _pump(coordinator, transport, lambda: _status(folder).get("training"), 60, "training to start")
            # Execute: stop the agent mid-training while the server is busy (it will not ack yet)
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=90)
            kept = (folder / "pending-update.bin").is_file()
            restarted = group.agent("agent-again", "dev-s", fleet, mosquitto_url, "digits", *args, state="agent")
            _pump(coordinator, transport, lambda: coordinator.finished, 60, "the round to close")
            wait_for(lambda: not (folder / "pending-update.bin").exists(), 30, "the kept update to be acknowledged")
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(timeout=30)
        finally:
            transport.publish(f"genfl/{fleet}/devices/dev-s/state", b"", retain=True)
            transport.close()
    # Assert: clean exit, the update survived the restart and was counted once
    assert code == 0, group.log("agent")[-2000:]
    assert kept
    assert coordinator.results[0].devices == 1
    assert "finishing up, then stopping" in group.log("agent")
    assert "re-sending the kept update of round 1" in group.log("agent-again")


def test_agent_rides_out_a_broker_outage_longer_than_its_backoff_cap(tmp_path: Path, fleet: str) -> None:
    broker = EmbeddedBroker(kind="mosquitto")
    url = broker.start()
    journal_dir = tmp_path / "server"
    first, transport = _coordinator(fleet, url, rounds=1, journal=SqliteJournal(journal_dir))
    with processes(tmp_path) as group:
        try:
            group.agent("agent", "dev-o", fleet, url, "digits", "--backoff-cap", "2", "--status-interval", "0.2")
            _pump(first, transport, lambda: first.finished, 90, "round 1")
            transport.close()
            # Execute: the broker is gone for three times the agent's backoff cap
            lines_before = group.log("agent").count("\n")
            broker.stop()
            time.sleep(6)
            outage_lines = group.log("agent").count("\n") - lines_before
            broker = EmbeddedBroker(port=broker.port, kind="mosquitto")
            broker.start()
            second, transport = _coordinator(fleet, url, rounds=2, journal=SqliteJournal(journal_dir))
            _pump(second, transport, lambda: second.finished, 90, "round 2 after the outage")
            transport.close()
        finally:
            broker.stop()
    # Assert: it took part in the next round with no help, and did not flood its log
    assert second.results[-1].round == 2 and second.results[-1].devices == 1
    assert outage_lines <= 5, group.log("agent")[-3000:]
    assert os.path.exists(journal_dir / "checkpoints" / "round-0002.safetensors")

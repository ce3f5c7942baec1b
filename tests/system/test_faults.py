"""Fault injection over real brokers and real processes; each run must finish with every
accepted update counted exactly once."""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cloud_server import EmbeddedBroker
from cloud_server.rounds._journal_reader import JournalReader
from models import build_model, model_state
from protocol import DeviceState, Task, Update, decode_message, decode_tensors, encode_message
from simulation import SimulationConfig
from tests.system._helpers import ENV, clear_retained, mqtt_client, processes, skip_unless_ci, wait_for
from tests.system.test_serve_resume import _write_shards


def _counted_once(journal: JournalReader, rounds: int, devices: int) -> None:
    rows = [(u.round, u.device_id) for u in journal.updates()]
    assert len(rows) == len(set(rows))
    per_round = [(r.round, r.accepted) for r in journal.closed_rounds()]
    assert per_round == [(r, devices) for r in range(1, rounds + 1)]
    for number, accepted in per_round:
        assert len([r for r in rows if r[0] == number]) == accepted


def _status(folder: Path) -> dict:
    path = folder / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_broker_restarted_mid_round(tmp_path: Path, fleet: str) -> None:
    specs = _write_shards(SimulationConfig(devices=3, rounds=2, seed=0), tmp_path)
    broker = EmbeddedBroker(kind="mosquitto")
    url = broker.start()
    state = tmp_path / "server"
    journal = JournalReader(state)
    with processes(tmp_path) as group:
        try:
            server = group.server("server", state, fleet, "--rounds", "2", "--min-devices", "3", "--broker", url)
            for device_id, spec in specs.items():
                group.agent(device_id, device_id, fleet, url, spec, "--backoff-cap", "2")
            wait_for(lambda: journal.updates(1), 90, "a first update")
            # Execute: the broker goes away mid-round and comes back (empty: it keeps no sessions)
            broker.stop()
            time.sleep(3)
            broker = EmbeddedBroker(port=broker.port, kind="mosquitto")
            broker.start()
            code = server.wait(timeout=150)
        finally:
            broker.stop()
        assert code == 0, group.log("server")[-3000:]
    _counted_once(journal, rounds=2, devices=3)


def test_agent_killed_mid_training_and_restarted(tmp_path: Path, mosquitto_url: str, fleet: str) -> None:
    specs = _write_shards(SimulationConfig(devices=2, rounds=2, seed=2), tmp_path)
    state = tmp_path / "server"
    journal = JournalReader(state)
    with processes(tmp_path) as group:
        try:
            server = group.server(
                "server", state, fleet, "--rounds", "2", "--min-devices", "2", "--broker", mosquitto_url
            )
            group.agent("a", "device-000", fleet, mosquitto_url, specs["device-000"])
            victim = group.agent(
                "b", "device-001", fleet, mosquitto_url, specs["device-001"], "--status-interval", "0.1",
                "--worker", "per-task",
            )  # fmt: skip
            wait_for(lambda: _status(tmp_path / "b").get("training"), 90, "device-001 training")
            # Execute: SIGKILL (power cut, OOM) mid-training, then the board comes back
            victim.kill()
            victim.wait()
            group.agent("b-again", "device-001", fleet, mosquitto_url, specs["device-001"], "--worker", "per-task",
                        state="b")  # fmt: skip
            code = server.wait(timeout=150)
        finally:
            clear_retained(mosquitto_url, fleet, list(specs))
        assert code == 0, group.log("server")[-3000:]
    _counted_once(journal, rounds=2, devices=2)
    assert "device-001 is back; sending its task again" in group.log("server")


def test_duplicate_and_out_of_order_updates_count_once(tmp_path: Path, mosquitto_url: str, fleet: str) -> None:
    state = tmp_path / "server"
    journal = JournalReader(state)
    base = f"genfl/{fleet}/devices"
    reference = model_state(build_model("cnn-digits"))
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()

    def update(task: Task, value: float) -> bytes:
        delta = {n: np.full(a.shape, value, dtype=a.dtype) for n, a in reference.items()}
        message = Update(round=task.round, device_id=task.device_id, base_model_id=task.model_id, num_samples=10,
                         train_loss=0.1, train_accuracy=0.5, delta=delta)  # fmt: skip
        return encode_message(message)

    def next_tasks() -> dict[str, Task]:
        tasks: dict[str, Task] = {}
        while len(tasks) < 2:
            task = decode_message(inbox.get(timeout=30)[1], Task)
            tasks[task.device_id] = task
        return tasks

    with processes(tmp_path) as group, mqtt_client(mosquitto_url, f"{fleet}-two-devices") as devices:
        devices.on_message = lambda c, u, m: inbox.put((m.topic, bytes(m.payload)))
        devices.subscribe(f"{base}/+/task", qos=1)
        server = group.server("server", state, fleet, "--rounds", "2", "--min-devices", "2", "--broker", mosquitto_url)
        try:
            wait_for(journal.exists, 30, "the server")
            for device_id in ("dev-a", "dev-b"):
                hello = DeviceState(device_id=device_id, state="online", num_samples=10)
                devices.publish(f"{base}/{device_id}/state", encode_message(hello), qos=1, retain=True)
            first = next_tasks()
            late = update(first["dev-a"], 0.01)

            def send(device_id: str, frame: bytes) -> None:
                devices.publish(f"{base}/{device_id}/update", frame, qos=1).wait_for_publish(5)

            # Execute: round 1: a's update twice (a redelivery), then b's
            send("dev-a", late)
            send("dev-a", late)
            send("dev-b", update(first["dev-b"], 0.03))
            second = next_tasks()
            # round 2: a's round-1 update arrives once more, out of order, before the round-2 updates
            send("dev-a", late)
            send("dev-a", update(second["dev-a"], 0.0))
            send("dev-b", update(second["dev-b"], 0.0))
            code = server.wait(timeout=60)
        finally:
            clear_retained(mosquitto_url, fleet, ["dev-a", "dev-b"])
        assert code == 0, group.log("server")[-3000:]
    _counted_once(journal, rounds=2, devices=2)
    # the round-1 frame again in round 2: byte-identical to an accepted update, so a replay
    assert journal.rejected().get("replay") == 1
    # round 1: (10*0.01 + 10*0.03) / 20 = 0.02 added to each float weight, once; round 2 adds 0
    start = decode_tensors((state / "checkpoints" / "round-0000.safetensors").read_bytes())
    end = decode_tensors((state / "checkpoints" / "round-0002.safetensors").read_bytes())
    np.testing.assert_allclose(end["classifier.bias"] - start["classifier.bias"], 0.02, atol=1e-6)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0  # fmt: skip


def test_read_only_state_dir_is_a_clear_error(tmp_path: Path, mosquitto_url: str, fleet: str) -> None:
    state = tmp_path / "ro"
    if not _mount_tmpfs(state, "1m"):
        skip_unless_ci("mounting a tmpfs needs root (CI runs as root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        done = subprocess.run(
            [sys.executable, "-m", "cloud_server", "serve", "--state-dir", str(state), "--broker", mosquitto_url,
             "--fleet", fleet], capture_output=True, text=True, env=ENV, timeout=60,
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "--lazy", str(state)], check=False)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: cannot use state dir {state}")
    assert "Traceback" not in done.stderr


def test_full_disk_refuses_updates_without_corrupting_state_and_recovers(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    specs = _write_shards(SimulationConfig(devices=2, rounds=1, seed=3), tmp_path)
    state = tmp_path / "small"
    if not _mount_tmpfs(state, "400k"):
        skip_unless_ci("mounting a tmpfs needs root (CI runs as root)")
    journal = JournalReader(state)
    try:
        with processes(tmp_path) as group:
            try:
                server = group.server("server", state, fleet, "--rounds", "1", "--min-devices", "2",
                                      "--broker", mosquitto_url)  # fmt: skip
                for name, (device_id, spec) in zip("ab", specs.items()):
                    group.agent(name, device_id, fleet, mosquitto_url, spec, "--resend-after", "2")
                wait_for(lambda: "not acknowledged" in group.log("server"), 90, "an update the server cannot store")
                with contextlib.closing(sqlite3.connect(journal.path)) as connection:
                    integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
                # Execute: the operator frees space; the kept updates are re-sent and the round completes
                subprocess.run(["mount", "-o", "remount,size=8m", str(state)], check=True)
                code = server.wait(timeout=120)
            finally:
                clear_retained(mosquitto_url, fleet, list(specs))
            assert code == 0, group.log("server")[-3000:]
        assert integrity == "ok"
        _counted_once(journal, rounds=1, devices=2)
    finally:
        subprocess.run(["umount", "--lazy", str(state)], check=False)

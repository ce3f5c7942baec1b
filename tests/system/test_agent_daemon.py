"""genfl-edge run as a real process against the machine's Mosquitto."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

import models
from cloud_server import Coordinator, CoordinatorConfig, FedAvg, StrategyConfig
from edge_agent import DeviceDataset, LabeledArrays, save_npz
from protocol import (
    BlobChunk,
    BlobStore,
    BrokerAddress,
    Failure,
    MqttTransport,
    Task,
    TrainConfig,
    Update,
    decode_message,
    encode_message,
    encode_tensors,
    iter_chunks,
)
from tests.system._helpers import clear_retained, mqtt_client, processes, wait_for

CLASSES = tuple("0123456789")  # the fleet's class names every task carries


def _status(folder: Path) -> dict:
    path = folder / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_agent_rejects_hostile_chunks_keeps_serving_and_sends_only_model_deltas(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: the test plays the server for one device
    device = "dev-h"
    base = f"genfl/{fleet}/devices/{device}"
    model_blob = encode_tensors(models.model_state(models.build_model("cnn-digits", seed=0)))
    chunks = list(iter_chunks(model_blob, 16 * 1024))
    task = Task(round=1, device_id=device, model_name="cnn-digits", model_id=chunks[0].blob_id,
                model_size=len(model_blob), config=TrainConfig(seed=1), classes=CLASSES)  # fmt: skip
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    with processes(tmp_path) as group, mqtt_client(mosquitto_url, f"{fleet}-fake-server") as server:
        server.on_message = lambda c, u, m: inbox.put((m.topic, bytes(m.payload)))
        server.subscribe(f"{base}/#", qos=1)
        agent = group.agent(device, device, fleet, mosquitto_url, "digits", "--status-interval", "0.5")
        try:
            wait_for(lambda: _status(tmp_path / device).get("connected"), 60, "the agent connected")
            server.publish(f"{base}/task", encode_message(task), qos=1).wait_for_publish(5)
            wrong_hash = BlobChunk(task.model_id, 0, len(chunks), len(model_blob), "0" * 64, chunks[0].data)
            # Execute: garbage, a chunk cut inside its header, a chunk with a wrong hash, one of another blob
            for payload in (
                b"\x00\xff garbage",
                encode_message(chunks[1])[:20],
                encode_message(wrong_hash),
                encode_message(next(iter_chunks(b"other blob", 1024))),
            ):
                server.publish(f"{base}/blob/chunk", payload, qos=1).wait_for_publish(5)
            for chunk in chunks:  # then the real ones
                server.publish(f"{base}/blob/chunk", encode_message(chunk), qos=1).wait_for_publish(5)
            sent: list[tuple[str, bytes]] = []

            def update_arrived() -> bool:
                while not inbox.empty():
                    sent.append(inbox.get())
                # the update itself, not a "still training" progress frame on the same topic
                return any(t.endswith("/update") and decode_message(p).TYPE == "update" for t, p in sent)

            wait_for(update_arrived, 90, "the trained update")
            wait_for(lambda: sum(_status(tmp_path / device).get("rejected", {}).values()) >= 4, 10, "counters")
            rejected = _status(tmp_path / device)["rejected"]
            alive = agent.poll() is None
        finally:
            clear_retained(mosquitto_url, fleet, [device])
    # Assert: each bad message rejected with its reason; the agent trained anyway and stayed up
    assert rejected == {"bad-frame": 2, "bad-chunk-hash": 1, "unwanted-chunk": 1}
    assert alive
    # Every message the device sent: its state, one blob request, the update. Only model-shaped deltas.
    kinds = [
        (t.rsplit("/", 1)[-1], decode_message(p).TYPE) for t, p in sent if not t.endswith(("/task", "/blob/chunk"))
    ]
    assert ("update", "update") in kinds and set(kinds) <= {
        ("state", "state"),
        ("req", "blob-req"),
        ("update", "update"),
        ("update", "progress"),  # "still training": a round number and seconds, nothing of the data
    }
    update = decode_message(
        next(p for t, p in sent if t.endswith("/update") and decode_message(p).TYPE == "update"), Update
    )
    reference = models.model_state(models.build_model("cnn-digits"))
    assert {n: a.shape for n, a in update.delta.items()} == {n: a.shape for n, a in reference.items()}


def _serve_in_process(
    fleet: str, url: str, rounds: int, store: BlobStore | None = None, task_resend_s: float = 30.0,
    strategy: StrategyConfig | None = None,
) -> tuple[Coordinator, MqttTransport]:  # fmt: skip
    transport = MqttTransport(BrokerAddress.parse(url), f"{fleet}-server", session_expiry_s=0)
    transport.connect()
    coordinator = Coordinator(
        CoordinatorConfig(
            fleet=fleet,
            model_name="cnn-digits",
            rounds=rounds,
            min_devices=1,
            round_timeout_s=90,
            task_resend_s=task_resend_s,
        ),
        FedAvg(strategy or StrategyConfig()),
        transport,
        models.model_state(models.build_model("cnn-digits", seed=0)),
        store=store,
    )
    coordinator.start()
    return coordinator, transport


def _pump(coordinator: Coordinator, transport: MqttTransport, until, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        transport.poll(0.05)
        coordinator.tick()


def test_a_dying_worker_is_reported_and_the_daemon_trains_the_next_round(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    coordinator, transport = _serve_in_process(fleet, mosquitto_url, rounds=2)
    with processes(tmp_path) as group:
        try:
            agent = group.agent("dev", "dev-w", fleet, mosquitto_url, "digits", "--status-interval", "0.2",
                                "--worker", "per-task")  # fmt: skip
            _pump(coordinator, transport, lambda: _status(tmp_path / "dev").get("worker_pid"), 60)
            worker = _status(tmp_path / "dev")["worker_pid"]
            # Execute: the kernel's OOM killer, say, ends the worker mid-round
            os.kill(worker, signal.SIGKILL)
            _pump(coordinator, transport, lambda: coordinator.finished, 120)
            alive = agent.poll() is None
        finally:
            transport.publish(f"genfl/{fleet}/devices/dev-w/state", b"", retain=True)
            transport.close()
    # Assert: round 1 closed without waiting (the failure was reported), round 2 trained normally
    assert coordinator.finished
    assert [r.devices for r in coordinator.results] == [0, 1]
    assert coordinator.results[0].seconds < 60
    assert alive
    assert "the training worker died (exit code -9)" in group.log("dev")


def test_data_that_does_not_fit_the_model_is_reported_as_a_failure(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    images = np.zeros((20, 3, 32, 32), dtype=np.uint8)
    arrays = LabeledArrays(images, np.arange(20) % 10)
    save_npz(DeviceDataset("cam", CLASSES, arrays, arrays), tmp_path / "cam.npz")  # fleet names, wrong shape
    base = f"genfl/{fleet}/devices/dev-c"
    coordinator, transport = _serve_in_process(fleet, mosquitto_url, rounds=1)
    failures: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    with processes(tmp_path) as group, mqtt_client(mosquitto_url, f"{fleet}-listener") as listener:
        listener.on_message = lambda c, u, m: failures.put(bytes(m.payload))
        listener.subscribe(f"{base}/update", qos=1)
        try:
            group.agent("dev", "dev-c", fleet, mosquitto_url, f"npz:{tmp_path / 'cam.npz'}")
            _pump(coordinator, transport, lambda: coordinator.finished, 90)
        finally:
            transport.publish(f"{base}/state", b"", retain=True)
            transport.close()
    frames = [decode_message(failures.get(timeout=5))]
    while frames[-1].TYPE == "progress":  # "still training" frames may come first
        frames.append(decode_message(failures.get(timeout=5)))
    failure = frames[-1]
    assert isinstance(failure, Failure)
    assert "images are 3x32x32 (CxHxW) but cnn-digits takes 1x8x8" in failure.reason
    assert coordinator.results[0].devices == 0


def test_an_agent_given_a_node_list_skips_a_dead_node_and_says_which_it_is_on(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: the first node of the list answers nothing
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"mqtt://127.0.0.1:{probe.getsockname()[1]}"
    nodes = f"{dead},{mosquitto_url}"
    with processes(tmp_path) as group:
        try:
            # Execute
            group.agent("dev-n", "dev-n", fleet, nodes, "digits", "--status-interval", "0.5")
            status = wait_for(lambda: _status(tmp_path / "dev-n").get("connected") and _status(tmp_path / "dev-n"),
                              60, "the agent connected")  # fmt: skip
        finally:
            clear_retained(mosquitto_url, fleet, ["dev-n"])
    # Assert
    assert status["broker"] == nodes
    assert status["broker_node"] == mosquitto_url


def test_a_model_corrupt_on_the_boards_disk_is_fetched_again_and_the_round_is_not_stalled(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: the board already holds round 1's model, with 8 bytes overwritten on its disk
    store = BlobStore()
    coordinator, transport = _serve_in_process(fleet, mosquitto_url, rounds=1, store=store)
    model = store.get(coordinator.global_id)
    damaged = bytearray(model)
    damaged[len(model) // 2 : len(model) // 2 + 8] = b"\x00" * 8
    (tmp_path / "dev" / "blobs").mkdir(parents=True)
    (tmp_path / "dev" / "blobs" / coordinator.global_id).write_bytes(bytes(damaged))
    with processes(tmp_path) as group:
        try:
            # Execute
            group.agent("dev", "dev-k", fleet, mosquitto_url, "digits", "--status-interval", "0.2")
            _pump(coordinator, transport, lambda: coordinator.finished, 80)
            _pump(coordinator, transport, lambda: _status(tmp_path / "dev").get("last_outcome"), 10)
            status = _status(tmp_path / "dev")
        finally:
            transport.publish(f"genfl/{fleet}/devices/dev-k/state", b"", retain=True)
            transport.close()
    # Assert: the round closed with the board's update well before its timeout; the board says what it did
    assert coordinator.finished, group.log("dev")[-3000:]
    assert [r.devices for r in coordinator.results] == [1]
    assert coordinator.results[0].seconds < 60
    assert "was corrupt on disk" in group.log("dev") and "fetching blob" in group.log("dev")
    assert status["training"] is False and status["last_outcome"] == [1, "accepted"]


def test_a_board_training_a_long_round_says_so_and_is_sent_no_task_again(
    tmp_path: Path, mosquitto_url: str, fleet: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a round that trains for several re-send intervals; the board says "still training" more often
    coordinator, transport = _serve_in_process(fleet, mosquitto_url, rounds=1, task_resend_s=3.0,
                                               strategy=StrategyConfig(local_epochs=30))  # fmt: skip
    config = tmp_path / "edge.toml"
    state = tmp_path / "dev"
    config.write_text(f'[agent]\ndevice_id = "dev-p"\ndata = "digits"\nstate_dir = "{state}"\n'
                      f'fleet = "{fleet}"\nbroker = "{mosquitto_url}"\nprogress_every = 0.5\n')  # fmt: skip
    caplog.set_level(logging.INFO, logger="genfl")
    with processes(tmp_path) as group:
        try:
            # Execute
            group.start("dev", "-m", "edge_agent", "run", "--config", str(config))
            _pump(coordinator, transport, lambda: coordinator.finished, 120)
            _pump(coordinator, transport, lambda: "accepted the update" in group.log("dev"), 10)
        finally:
            transport.publish(f"genfl/{fleet}/devices/dev-p/state", b"", retain=True)
            transport.close()
    # Assert: the round outlasted the re-send interval, yet no task was sent again; the board logged its steps
    assert coordinator.finished and [r.devices for r in coordinator.results] == [1], group.log("dev")[-3000:]
    assert coordinator.results[0].seconds > 2 * 3.0
    assert "sending its task again" not in caplog.text, group.log("dev")[-3000:]
    assert "trained round 1 in" in group.log("dev") and "accepted the update of round 1" in group.log("dev")

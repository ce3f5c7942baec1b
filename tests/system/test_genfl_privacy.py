"""GenFL over a real Mosquitto with real agent processes: no raw device sample ever leaves a device.

A spy subscribes to the fleet's whole topic tree before anything starts and
keeps every message. Everything a device sent (state, updates, blob requests)
is decoded and searched for the bytes of every sample the device holds, and
the label counts it shared must be the noised release, not the histogram.
"""

from __future__ import annotations

import threading

import numpy as np

from cloud_server.learning._genfl_config import GenflConfig
from protocol import (
    BlobRequest,
    BrokerAddress,
    DeviceState,
    Failure,
    MqttTransport,
    Progress,
    Task,
    Topics,
    Update,
    decode_message,
)
from simulation._simulation import SimulationConfig, device_shards, run_simulation
from tests.system._helpers import wait_for

DEVICE_CHANNELS = {"state", "update", "blob/req"}


def test_no_raw_sample_leaves_a_device_and_label_counts_are_noised(mosquitto_url: str, fleet: str) -> None:
    # Prepare: the spy, then a two-round GenFL federation of three agent processes
    config = SimulationConfig(
        dataset="digits", devices=3, partition="shards", classes_per_device=2, rounds=2, seed=3,
        strategy="genfl", transport="mqtt", broker=mosquitto_url, fleet=fleet, label_noise=0.5, local_epochs=1,
        # no teachers gate: two short rounds need not fit 90%, and this test is about what goes on the wire
        genfl=GenflConfig(generator_steps=5, generator_batch=16, synthetic_budget_kb=16, teacher_gate=0.0),
    )  # fmt: skip
    topics = Topics(fleet)
    seen: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    spy = MqttTransport(BrokerAddress.parse(mosquitto_url), f"spy-{fleet}", session_expiry_s=0)

    def keep(topic: str, payload: bytes) -> None:
        with lock:
            seen.append((topic, bytes(payload)))

    spy.set_handler(keep)
    spy.connect()
    spy.subscribe(f"{topics.root}/#")
    spy.poll(0.5)
    # Execute
    stop = threading.Event()

    def pump_messages() -> None:
        while not stop.is_set():
            spy.poll(0.05)

    pump = threading.Thread(target=pump_messages, daemon=True)
    pump.start()
    try:
        result = run_simulation(config)

        def last_updates_seen() -> bool:
            with lock:
                return sum(topic.endswith("/update") for topic, _ in seen) >= 2 * config.devices

        wait_for(last_updates_seen, 10, "the spy to see every update")
    finally:
        stop.set()
        pump.join(5)
        spy.close()
    # Assert: the federation ran and devices got synthetic batches through the blob transfer
    assert [r.round for r in result.rounds] == [1, 2]
    shards = dict(device_shards(config).shards)
    sent_by_devices: dict[str, list[object]] = {d: [] for d in shards}
    tasks: list[Task] = []
    requested: dict[str, set[str]] = {d: set() for d in shards}
    for topic, payload in seen:
        parsed = topics.parse(topic)
        if not payload:
            continue  # a cleared retained state
        if parsed.channel == "task":
            tasks.append(decode_message(payload, Task))
        if parsed.channel not in DEVICE_CHANNELS:
            continue
        message = decode_message(payload, (DeviceState, Update, Failure, BlobRequest, Progress))
        sent_by_devices[parsed.device_id].append(message)
        if isinstance(message, BlobRequest):
            requested[parsed.device_id].add(message.blob_id)
        # no sample of this device, as stored or as the floats a model sees, is in anything it sent
        shard = shards[parsed.device_id]
        for image in shard.images:
            assert image.tobytes() not in payload
            assert (image.astype(np.float32) / 255.0).tobytes() not in payload
    synthetic_tasks = [t for t in tasks if t.synthetic_id is not None]
    assert synthetic_tasks and all(t.round == 2 for t in synthetic_tasks)
    for task in synthetic_tasks:
        assert task.synthetic_id in requested[task.device_id]  # fetched over MQTT like the model
    for device_id, messages in sent_by_devices.items():
        kinds = {type(m).__name__ for m in messages}
        # (Progress: "still training", a round number and seconds, nothing of the data)
        assert kinds <= {"DeviceState", "Update", "BlobRequest", "Progress"} and "Update" in kinds, kinds
        exact = shards[device_id].label_counts(10).astype(float)
        for message in messages:
            if isinstance(message, DeviceState):
                assert message.label_counts is not None and len(message.label_counts) == 10
                assert min(message.label_counts) >= 0 and tuple(message.label_counts) != tuple(exact)
                assert message.num_samples == len(shards[device_id])
            if isinstance(message, Update):  # a model delta and nothing else
                assert message.num_samples == len(shards[device_id])
                assert set(message.delta) == set(result.final_state)

"""AgentCore over the in-memory bus: a finished update is kept until acknowledged."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent import AgentCore, TrainingDone
from protocol import (
    Ack,
    BlobStore,
    InMemoryBus,
    Task,
    Topics,
    TrainConfig,
    Update,
    decode_message,
    encode_message,
)

TOPICS = Topics("unit")


class InstantRunner:
    def start(self, task: Task, model_blob: bytes, done: TrainingDone) -> None:
        done(task, Update(round=task.round, device_id=task.device_id, base_model_id=task.model_id, num_samples=4,
                          train_loss=0.1, train_accuracy=1.0, delta={"w": np.ones(2, dtype=np.float32)}))  # fmt: skip


def _server(bus: InMemoryBus) -> tuple[list[Update], object]:
    server = bus.connect()
    got: list[Update] = []
    server.set_handler(lambda t, p: got.append(decode_message(p)) if t.endswith("/update") else None)
    server.subscribe(TOPICS.all_devices("update"))
    return got, server


def test_update_is_kept_on_disk_until_acked_and_resent_after_a_restart(tmp_path: Path) -> None:
    # Prepare: the device holds the model already
    bus = InMemoryBus()
    store = BlobStore(tmp_path / "blobs")
    model_id = store.put(b"model")
    got, server = _server(bus)
    pending = tmp_path / "pending-update.bin"
    agent = AgentCore("dev", TOPICS, bus.connect(), store, InstantRunner(), num_samples=4, pending_path=pending)
    agent.start()
    task = Task(round=3, device_id="dev", model_name="toy", model_id=model_id, model_size=5, config=TrainConfig())
    server.publish(TOPICS.device("dev", "task"), encode_message(task))  # type: ignore[attr-defined]
    bus.drain()
    assert pending.is_file() and len(got) == 1
    # Execute: the agent restarts before any ack, then the ack comes
    again = AgentCore("dev", TOPICS, bus.connect(), store, InstantRunner(), num_samples=4, pending_path=pending)
    again.start()
    bus.drain()
    assert len(got) == 2  # the first copy, and the restarted agent's re-send
    ack = Ack(round=3, device_id="dev", accepted=True)
    server.publish(TOPICS.device("dev", "ack"), encode_message(ack))  # type: ignore[attr-defined]
    bus.drain()
    # Assert
    assert not pending.exists()
    assert again.last_outcome == (3, "accepted")
    assert {u.round for u in got} == {3}

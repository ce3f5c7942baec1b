"""The coordinator's round logic over the in-memory bus, with a fake device and a real journal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud_server import Coordinator, CoordinatorConfig, FedAvg, SqliteJournal, StrategyConfig
from protocol import (
    Ack,
    DeviceState,
    Failure,
    InMemoryBus,
    Task,
    Topics,
    Update,
    decode_message,
    encode_message,
)

FLEET = "unit"
TOPICS = Topics(FLEET)
START = {"w": np.zeros(3, dtype=np.float32)}


class Device:
    """A scripted device on the bus that records what it receives."""

    def __init__(self, bus: InMemoryBus, device_id: str) -> None:
        self.device_id = device_id
        self.transport = bus.connect()
        self.received: list[object] = []
        self.transport.set_handler(lambda topic, payload: self.received.append(decode_message(payload)))
        for channel in ("task", "ack"):
            self.transport.subscribe(TOPICS.device(device_id, channel))  # type: ignore[arg-type]

    def send(self, channel: str, message: object) -> None:
        self.transport.publish(TOPICS.device(self.device_id, channel), encode_message(message))  # type: ignore[arg-type]

    def hello(self, samples: int = 10) -> None:
        self.send("state", DeviceState(device_id=self.device_id, state="online", num_samples=samples))

    def update(self, task: Task, value: float, samples: int = 10) -> Update:
        return Update(round=task.round, device_id=self.device_id, base_model_id=task.model_id, num_samples=samples,
                      train_loss=0.5, train_accuracy=0.5, delta={"w": np.full(3, value, dtype=np.float32)})  # fmt: skip

    def tasks(self) -> list[Task]:
        return [m for m in self.received if isinstance(m, Task)]

    def acks(self) -> list[Ack]:
        return [m for m in self.received if isinstance(m, Ack)]


def _coordinator(bus: InMemoryBus, journal: SqliteJournal | None = None, rounds: int = 1) -> Coordinator:
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=rounds, min_devices=2, round_timeout_s=60)
    coordinator = Coordinator(config, FedAvg(StrategyConfig()), bus.connect(), START, journal=journal)
    coordinator.start()
    return coordinator


def test_duplicates_count_once_and_a_replay_in_a_later_round_is_refused_and_counted() -> None:
    # Prepare
    bus = InMemoryBus()
    coordinator = _coordinator(bus)
    a, b = Device(bus, "a"), Device(bus, "b")
    a.hello(10)
    b.hello(30)
    bus.drain()
    task_a, task_b = a.tasks()[0], b.tasks()[0]
    # Execute: a's update twice (a QoS 1 redelivery), then b's
    a.send("update", a.update(task_a, 1.0, 10))
    a.send("update", a.update(task_a, 1.0, 10))
    b.send("update", b.update(task_b, 5.0, 30))
    bus.drain()
    a.send("update", a.update(task_a, 1.0, 10))  # the round is closed now: the same bytes again
    a.send("update", a.update(task_a, 2.0, 10))  # a late update it never sent before
    bus.drain()
    # Assert: (10*1 + 30*5) / 40 = 4, a counted once; the replay is refused and counted (its ack says the
    # first copy did count), the late new update is refused with a reason
    np.testing.assert_array_equal(coordinator.global_state["w"], np.full(3, 4.0, dtype=np.float32))
    assert [(k.accepted, k.reason) for k in a.acks()] == [
        (True, ""), (True, "duplicate"), (True, "duplicate"), (False, "closed-round"),
    ]  # fmt: skip
    assert coordinator.rejected["replay"] == 1
    assert coordinator.rejected["closed-round"] == 1


def test_a_reported_failure_closes_the_round_without_waiting() -> None:
    bus = InMemoryBus()
    coordinator = _coordinator(bus)
    a, b = Device(bus, "a"), Device(bus, "b")
    a.hello()
    b.hello()
    bus.drain()
    a.send("update", a.update(a.tasks()[0], 2.0))
    b.send("update", Failure(round=1, device_id="b", reason="out of memory"))
    bus.drain()
    # min_devices=2 is not met, so the model stays, but the round is over at once
    assert coordinator.finished
    assert coordinator.results[0].devices == 1
    np.testing.assert_array_equal(coordinator.global_state["w"], START["w"])


def test_a_restarted_coordinator_resumes_the_open_round_from_its_journal(tmp_path: Path) -> None:
    # Prepare: round 1 open, a's update accepted, then the coordinator "dies"
    bus = InMemoryBus()
    first = _coordinator(bus, SqliteJournal(tmp_path), rounds=1)
    a, b = Device(bus, "a"), Device(bus, "b")
    a.hello(10)
    b.hello(30)
    bus.drain()
    a.send("update", a.update(a.tasks()[0], 1.0, 10))
    bus.drain()
    first.transport.set_handler(lambda topic, payload: None)  # gone
    # Execute: a new coordinator on the same state dir and bus; b answers the re-sent task
    second = _coordinator(bus, SqliteJournal(tmp_path), rounds=1)
    bus.drain()
    assert len(b.tasks()) == 2 and len(a.tasks()) == 1  # only the device that had not answered is asked again
    b.send("update", b.update(b.tasks()[-1], 5.0, 30))
    a.send("update", a.update(a.tasks()[0], 1.0, 10))  # a's ack was lost: it re-sends, counted once
    bus.drain()
    # Assert
    assert second.finished
    np.testing.assert_array_equal(second.global_state["w"], np.full(3, 4.0, dtype=np.float32))
    assert (tmp_path / "checkpoints" / "round-0001.safetensors").is_file()

"""AgentCore over the in-memory bus: a finished update is kept until acknowledged."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent import AgentCore, TrainingDone
from edge_agent._agent import WILL_ANSWER_S
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

CLASSES = tuple("0123456789")  # the fleet's class names every task carries

TOPICS = Topics("unit")


class InstantRunner:
    def start(self, task: Task, model_blob: bytes, done: TrainingDone, synthetic_blob: bytes | None = None,
              probe_blob: bytes | None = None) -> None:  # fmt: skip
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
    task = Task(
        round=3,
        device_id="dev",
        model_name="toy",
        model_id=model_id,
        model_size=5,
        config=TrainConfig(),
        classes=CLASSES,
    )
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


class KeepingRunner:
    """Records what each training got, then answers like InstantRunner."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes | None]] = []

    def start(self, task: Task, model_blob: bytes, done: TrainingDone, synthetic_blob: bytes | None = None,
              probe_blob: bytes | None = None) -> None:  # fmt: skip
        self.got.append((model_blob, synthetic_blob))
        InstantRunner().start(task, model_blob, done)


def test_a_task_with_a_synthetic_batch_fetches_it_after_the_model_and_trains_with_both(tmp_path: Path) -> None:
    # Prepare: a server that serves two blobs and records what the device asks for
    from protocol import BlobRequest, iter_chunks

    bus = InMemoryBus()
    blobs = {b: BlobStore().put(b) for b in (b"model-bytes" * 300, b"synthetic-bytes" * 500)}
    by_id = {ident: data for data, ident in blobs.items()}
    server = bus.connect()
    asked: list[str] = []

    def serve(topic: str, payload: bytes) -> None:
        if topic.endswith("/blob/req"):
            request = decode_message(payload, BlobRequest)
            asked.append(request.blob_id)
            for chunk in iter_chunks(by_id[request.blob_id], 1024):
                server.publish(TOPICS.device("dev", "blob/chunk"), encode_message(chunk))

    server.set_handler(serve)
    server.subscribe(TOPICS.all_devices("blob/req"))
    runner = KeepingRunner()
    store = BlobStore(tmp_path / "blobs")
    agent = AgentCore("dev", TOPICS, bus.connect(), store, runner, num_samples=4)
    agent.start()
    model, synthetic = list(blobs)
    task = Task(round=1, device_id="dev", model_name="toy", model_id=blobs[model], model_size=len(model),
                config=TrainConfig(synthetic_weight=0.5), classes=CLASSES, synthetic_id=blobs[synthetic],
                synthetic_size=len(synthetic))  # fmt: skip
    # Execute
    server.publish(TOPICS.device("dev", "task"), encode_message(task))
    bus.drain()
    # Assert: model first, then the batch; training got both; the next round's task drops the old batch
    assert asked == [blobs[model], blobs[synthetic]]
    assert runner.got == [(model, synthetic)]
    later = Task(round=2, device_id="dev", model_name="toy", model_id=blobs[model], model_size=len(model),
                 config=TrainConfig(), classes=CLASSES)  # fmt: skip
    server.publish(TOPICS.device("dev", "task"), encode_message(later))
    bus.drain()
    assert not store.has(blobs[synthetic]) and runner.got[-1] == (model, None)


def test_hostile_task_frames_and_chunks_are_rejected_without_allocating_and_the_agent_goes_on(tmp_path: Path) -> None:
    # Prepare
    import time

    from edge_agent import TaskPolicy
    from protocol import BlobChunk, Failure

    bus = InMemoryBus()
    got, server = _server(bus)
    agent = AgentCore("dev", TOPICS, bus.connect(), BlobStore(tmp_path / "blobs"), InstantRunner(), num_samples=40,
                      policy=TaskPolicy())  # fmt: skip
    agent.start()
    header = b'{"type":"task","round":' + b"7" * 5000 + b"}"
    killer = b"GFL\x02" + len(header).to_bytes(4, "big") + header
    model_id = "cd" * 32
    task = Task(
        round=1,
        device_id="dev",
        model_name="toy",
        model_id=model_id,
        model_size=5000,
        config=TrainConfig(),
        classes=CLASSES,
    )
    # Execute: a task whose round has 5,000 digits; a real task; chunks that lie about the blob
    server.publish(TOPICS.device("dev", "task"), killer)  # type: ignore[attr-defined]
    server.publish(TOPICS.device("dev", "task"), encode_message(task))  # type: ignore[attr-defined]
    started = time.perf_counter()
    for count, total in ((2**31 - 1, 5000), (2, 10**8)):  # more chunks than 5000 B can hold; another size
        chunk = BlobChunk(model_id, 0, count, total, "00" * 32, b"x")
        server.publish(TOPICS.device("dev", "blob/chunk"), encode_message(chunk))  # type: ignore[attr-defined]
    bus.drain()
    # Assert: rejected fast, and the agent still serves its task
    assert time.perf_counter() - started < 1.0
    assert agent.rejected["bad-frame"] == 1 and agent.rejected["bad-chunk"] == 2
    assert agent.current_task == task
    # Execute + Assert: a task outside the device's policy is refused with the reason, as a failure
    greedy = Task(round=2, device_id="dev", model_name="toy", model_id=model_id, model_size=5000,
                  config=TrainConfig(batch_size=40, local_epochs=1), classes=CLASSES)  # one full-batch step # fmt: skip
    server.publish(TOPICS.device("dev", "task"), encode_message(greedy))  # type: ignore[attr-defined]
    bus.drain()
    assert isinstance(got[-1], Failure) and "policy: 1 local steps" in got[-1].reason
    assert agent.last_outcome == (2, "refused: 1 local steps is below this device's minimum 2")
    server.publish(TOPICS.device("dev", "task"), encode_message(greedy))  # type: ignore[attr-defined]
    bus.drain()
    assert isinstance(got[-1], Failure) and len(got) == 2  # a repeated task gets the same refusal


def test_the_task_policy_bounds_batch_steps_codec_and_qat() -> None:
    from edge_agent import TaskPolicy
    from protocol import ConfigError

    policy = TaskPolicy(min_batch_size=8, min_local_steps=3, allowed_codecs=("int8",), require_qat=True)
    assert policy.refusal(TrainConfig(batch_size=16, local_epochs=2, codec="int8"), 40) is None  # 2 x 3 steps
    assert "batch size 4" in str(policy.refusal(TrainConfig(batch_size=4, codec="int8"), 40))
    assert "2 local steps" in str(policy.refusal(TrainConfig(batch_size=20, local_epochs=1, codec="int8"), 40))
    assert "codec fp32" in str(policy.refusal(TrainConfig(batch_size=8, codec="fp32"), 40))
    assert "quantization-aware" in str(policy.refusal(TrainConfig(batch_size=8, codec="int8", qat=False), 40))
    careful = TaskPolicy(require_secure_aggregation=True)
    assert "secure aggregation only" in str(careful.refusal(TrainConfig(), 400))
    assert careful.refusal(TrainConfig(secure_aggregation=True), 400) is None
    private = TaskPolicy(min_noise_multiplier=1.0)
    assert "noise multiplier >= 1 (none)" in str(private.refusal(TrainConfig(), 400))
    assert "(noise multiplier 0.5)" in str(private.refusal(TrainConfig(clip_norm=1.0, noise_multiplier=0.5), 400))
    assert private.refusal(TrainConfig(clip_norm=1.0, noise_multiplier=1.2), 400) is None
    with pytest.raises(ConfigError):
        TaskPolicy(allowed_codecs=("zip",))


def test_a_late_will_while_the_agent_is_here_is_answered_with_online_again_at_a_bounded_pace(tmp_path: Path) -> None:
    # Prepare: the server watches the device's state; the broker (the test) holds the device's will
    from protocol import DeviceState

    bus = InMemoryBus()
    will = encode_message(DeviceState(device_id="dev", state="offline", num_samples=4))
    states: list[str] = []
    server = bus.connect()
    server.set_handler(lambda t, p: states.append(decode_message(p).state) if p else None)  # type: ignore[attr-defined]
    server.subscribe(TOPICS.device("dev", "state"))
    agent = AgentCore("dev", TOPICS, bus.connect(), BlobStore(tmp_path), InstantRunner(), num_samples=4,
                      will_payload=will)  # fmt: skip
    agent.start()
    bus.drain()
    broker = bus.connect()
    # Execute: the will arrives late (after the agent said "online"), twice; then another offline frame
    broker.publish(TOPICS.device("dev", "state"), will, retain=True)
    broker.publish(TOPICS.device("dev", "state"), will, retain=True)
    other = encode_message(DeviceState(device_id="dev", state="offline", num_samples=5))
    broker.publish(TOPICS.device("dev", "state"), other, retain=True)
    bus.drain()
    # Assert: the first copy of the will is answered at once; the second, within WILL_ANSWER_S of that answer,
    # once the interval is over (so a replayed will cannot make the agent publish at its pace), and the last
    # word is "online"; the other frame is not ours
    assert states == ["online", "offline", "offline", "offline", "online"]
    assert agent.rejected == {"will-flood": 1}
    agent.refresh_state(time.monotonic(), every_s=0)  # too soon yet
    bus.drain()
    assert len(states) == 5
    agent.refresh_state(time.monotonic() + WILL_ANSWER_S, every_s=0)
    bus.drain()
    assert states == ["online", "offline", "offline", "offline", "online", "online"]
    # an agent that is leaving does not contradict its own goodbye
    agent.publish_state("offline")
    broker.publish(TOPICS.device("dev", "state"), will, retain=True)
    bus.drain()
    assert states[-2:] == ["offline", "offline"]


def test_a_repeated_task_leaves_a_moving_download_alone_and_resumes_a_stalled_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a server that sends only the first chunk of what is asked; a clock the test moves
    import edge_agent._agent as agent_module
    from protocol import BlobRequest, iter_chunks

    now = [100.0]
    monkeypatch.setattr(agent_module.time, "monotonic", lambda: now[0])
    bus = InMemoryBus()
    model = b"model-bytes" * 300
    model_id = BlobStore().put(model)
    server = bus.connect()
    asked: list[tuple[int, ...]] = []

    def serve(topic: str, payload: bytes) -> None:
        request = decode_message(payload, BlobRequest)
        asked.append(request.chunks)
        if len(asked) == 1:
            server.publish(TOPICS.device("dev", "blob/chunk"), encode_message(next(iter_chunks(model, 1024))))

    server.set_handler(serve)
    server.subscribe(TOPICS.all_devices("blob/req"))
    agent = AgentCore("dev", TOPICS, bus.connect(), BlobStore(tmp_path), KeepingRunner(), num_samples=4)
    agent.start()
    task = Task(round=1, device_id="dev", model_name="toy", model_id=model_id, model_size=len(model),
                config=TrainConfig(), classes=CLASSES)  # fmt: skip
    server.publish(TOPICS.device("dev", "task"), encode_message(task))
    bus.drain()
    # Execute: the task again 5 s after the last chunk (moving), then 11 s after it (stalled)
    now[0] += 5
    server.publish(TOPICS.device("dev", "task"), encode_message(task))
    bus.drain()
    moving = list(asked)
    now[0] += 6
    server.publish(TOPICS.device("dev", "task"), encode_message(task))
    bus.drain()
    # Assert: one request for everything; none while chunks were arriving; then only the missing ones
    assert moving == [()]
    assert asked == [(), (1, 2, 3)]


def test_the_agent_says_online_again_every_refresh_interval_and_not_after_saying_goodbye(tmp_path: Path) -> None:
    import time

    bus = InMemoryBus()
    states: list[str] = []
    server = bus.connect()
    server.set_handler(lambda t, p: states.append(decode_message(p).state))  # type: ignore[attr-defined]
    server.subscribe(TOPICS.device("dev", "state"))
    agent = AgentCore("dev", TOPICS, bus.connect(), BlobStore(tmp_path), InstantRunner(), num_samples=4)
    agent.start()
    start = time.monotonic()
    agent.refresh_state(start + 30, 60)  # too soon
    agent.refresh_state(start + 61, 60)
    agent.refresh_state(start + 62, 0)  # 0: only on connect
    agent.publish_state("offline")
    agent.refresh_state(start + 1000, 60)
    bus.drain()
    assert states == ["online", "online", "offline"]


def test_a_board_learns_the_fleets_classes_from_a_task_and_announces_its_counts_in_that_order() -> None:
    # Prepare: a board that holds cat (3) and dog (5) and does not know the fleet's list yet
    from protocol import DataError, DeviceState, Failure

    bus = InMemoryBus()
    store = BlobStore()
    model_id = store.put(b"model")
    server = bus.connect()
    states: list[DeviceState] = []
    failures: list[Failure] = []
    server.set_handler(lambda t, p: (states if t.endswith("/state") else failures).append(decode_message(p)))
    server.subscribe(TOPICS.all_devices("state"))
    server.subscribe(TOPICS.all_devices("update"))
    own = {"cat": 3.0, "dog": 5.0}

    def recount(classes: tuple[str, ...]) -> tuple[float, ...]:
        unknown = set(own) - set(classes)
        if unknown:
            raise DataError(f"holds class {sorted(unknown)[0]!r}, which is not one of the fleet's classes")
        return tuple(own.get(name, 0.0) for name in classes)

    agent = AgentCore("dev", TOPICS, bus.connect(), store, InstantRunner(), num_samples=8, recount=recount)
    agent.start()
    bus.drain()
    fleet = ("bird", "cat", "dog")

    def task(round_number: int, classes: tuple[str, ...]) -> Task:
        return Task(round=round_number, device_id="dev", model_name="toy", model_id=model_id, model_size=5,
                    config=TrainConfig(), classes=classes)  # fmt: skip

    # Execute: a task names the fleet's classes; a later one names a list without "dog"
    server.publish(TOPICS.device("dev", "task"), encode_message(task(1, fleet)))
    bus.drain()
    server.publish(TOPICS.device("dev", "task"), encode_message(task(2, ("bird", "cat"))))
    bus.drain()
    # Assert: no counts before the list was known, then counts in the fleet's order; the foreign list is refused
    assert states[0].label_counts is None
    assert states[1].label_counts == (0.0, 3.0, 5.0)
    refusals = [f for f in failures if isinstance(f, Failure)]
    assert len(refusals) == 1 and refusals[0].round == 2 and refusals[0].reason.startswith("data: holds class 'dog'")
    assert agent.last_outcome is not None and agent.last_outcome[0] == 2 and "dog" in agent.last_outcome[1]


class RefusingRunner:
    """A worker that cannot start (a full disk, a missing interpreter), then one that can."""

    def __init__(self) -> None:
        self.broken = True
        self.trained: list[int] = []

    def start(self, task: Task, model_blob: bytes, done: TrainingDone, synthetic_blob: bytes | None = None,
              probe_blob: bytes | None = None) -> None:  # fmt: skip
        if self.broken:
            raise OSError(28, "No space left on device")
        self.trained.append(task.round)
        InstantRunner().start(task, model_blob, done)


def _serving(bus: InMemoryBus, blobs: dict[str, bytes]) -> tuple[list[str], list[object], object]:
    """A server that answers blob requests from ``blobs`` and records requests and update-topic frames."""
    from protocol import BlobRequest, Failure, iter_chunks

    server = bus.connect()
    asked: list[str] = []
    frames: list[object] = []

    def serve(topic: str, payload: bytes) -> None:
        if topic.endswith("/blob/req"):
            request = decode_message(payload, BlobRequest)
            asked.append(request.blob_id)
            for chunk in iter_chunks(blobs[request.blob_id], 1024):
                server.publish(TOPICS.device("dev", "blob/chunk"), encode_message(chunk))
        elif topic.endswith("/update"):
            frames.append(decode_message(payload, (Update, Failure)))

    server.set_handler(serve)
    server.subscribe(TOPICS.all_devices("blob/req"))
    server.subscribe(TOPICS.all_devices("update"))
    return asked, frames, server


def test_a_model_corrupt_on_disk_is_fetched_again_and_the_round_trains(tmp_path: Path) -> None:
    # Prepare: the board holds the round's model, then 8 of its bytes are overwritten on disk
    bus = InMemoryBus()
    model = bytes(range(256)) * 40
    store = BlobStore(tmp_path / "blobs")
    model_id = store.put(model)
    path = store.path(model_id)
    assert path is not None
    damaged = bytearray(model)
    damaged[100:108] = b"\xff" * 8
    path.write_bytes(bytes(damaged))
    asked, frames, server = _serving(bus, {model_id: model})
    runner = KeepingRunner()
    agent = AgentCore("dev", TOPICS, bus.connect(), store, runner, num_samples=4)
    agent.start()
    task = Task(round=8, device_id="dev", model_name="toy", model_id=model_id, model_size=len(model),
                config=TrainConfig(), classes=CLASSES)  # fmt: skip
    # Execute
    server.publish(TOPICS.device("dev", "task"), encode_message(task))  # type: ignore[attr-defined]
    bus.drain()
    # Assert: fetched once more, trained on the whole model, the update sent; no state without a job
    assert asked == [model_id]
    assert runner.got == [(model, None)]
    assert [type(f).__name__ for f in frames] == ["Update"] and not agent.training


def test_a_job_that_cannot_start_is_reported_and_the_next_send_of_the_task_trains(tmp_path: Path) -> None:
    # Prepare
    bus = InMemoryBus()
    store = BlobStore(tmp_path / "blobs")
    model_id = store.put(b"model")
    _, frames, server = _serving(bus, {})
    runner = RefusingRunner()
    agent = AgentCore("dev", TOPICS, bus.connect(), store, runner, num_samples=4)
    agent.start()
    task = Task(round=2, device_id="dev", model_name="toy", model_id=model_id, model_size=5, config=TrainConfig(),
                classes=CLASSES)  # fmt: skip
    # Execute 1: the worker cannot start
    server.publish(TOPICS.device("dev", "task"), encode_message(task))  # type: ignore[attr-defined]
    bus.drain()
    # Assert 1: the round's failure is reported with the reason; the board is not "training"
    assert [type(f).__name__ for f in frames] == ["Failure"]
    assert "did not start" in frames[0].reason and "No space left" in frames[0].reason  # type: ignore[attr-defined]
    assert not agent.training and agent.last_outcome is not None and agent.last_outcome[0] == 2
    # Execute 2: the next round's task, with the worker fixed
    runner.broken = False
    later = Task(round=3, device_id="dev", model_name="toy", model_id=model_id, model_size=5, config=TrainConfig(),
                 classes=CLASSES)  # fmt: skip
    server.publish(TOPICS.device("dev", "task"), encode_message(later))  # type: ignore[attr-defined]
    bus.drain()
    # Assert 2: it trains, without a restart
    assert runner.trained == [3] and type(frames[-1]).__name__ == "Update"


def test_a_board_keeps_the_current_and_the_previous_model_not_one_per_round(tmp_path: Path) -> None:
    # Prepare: a board that holds the models of rounds 1..4 as they arrive
    bus = InMemoryBus()
    store = BlobStore(tmp_path / "blobs")
    models_by_round = {r: store.put(f"model of round {r}".encode() * 20) for r in range(1, 5)}
    got, server = _server(bus)
    agent = AgentCore("dev", TOPICS, bus.connect(), store, InstantRunner(), num_samples=4)
    agent.start()
    # Execute: a task per round
    for number, model_id in models_by_round.items():
        task = Task(round=number, device_id="dev", model_name="toy", model_id=model_id, model_size=1,
                    config=TrainConfig(), classes=CLASSES)  # fmt: skip
        server.publish(TOPICS.device("dev", "task"), encode_message(task))  # type: ignore[attr-defined]
        bus.drain()
    # Assert: every round trained; only rounds 3 and 4's models are left
    assert [u.round for u in got] == [1, 2, 3, 4]
    assert [r for r, m in models_by_round.items() if store.has(m)] == [3, 4]


def test_at_start_a_blob_store_keeps_its_newest_blobs() -> None:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        store = BlobStore(Path(folder))
        ids = [store.put(bytes([n]) * 10) for n in range(5)]
        for age, ident in enumerate(reversed(ids)):  # ids[4] newest
            path = store.path(ident)
            assert path is not None
            os.utime(path, (1_000_000 - age, 1_000_000 - age))
        (Path(folder) / "partial").mkdir()
        removed = store.keep_newest(3)
        assert sorted(removed) == sorted(ids[:2]) and all(store.has(i) for i in ids[2:])
        assert (Path(folder) / "partial").is_dir()
        assert BlobStore().keep_newest(0) == []


def test_a_task_for_a_passed_round_is_refused_once_and_only_an_ack_moves_the_round_counter(tmp_path: Path) -> None:
    # Prepare: a board that holds the model, and the server's side of its topics
    from protocol import Failure

    bus = InMemoryBus()
    store = BlobStore(tmp_path / "blobs")
    model_id = store.put(b"model")
    got, server = _server(bus)
    agent = AgentCore("dev", TOPICS, bus.connect(), store, InstantRunner(), num_samples=4,
                      pending_path=tmp_path / "pending", round_path=tmp_path / "last-round")  # fmt: skip
    agent.start()

    def task(number: int) -> None:
        message = Task(round=number, device_id="dev", model_name="toy", model_id=model_id, model_size=5,
                       config=TrainConfig(), classes=CLASSES)  # fmt: skip
        server.publish(TOPICS.device("dev", "task"), encode_message(message))  # type: ignore[attr-defined]
        bus.drain()

    # Execute 1: round 3 trains; only the server's ack makes it the board's round
    task(3)
    assert [type(m).__name__ for m in got] == ["Update"] and agent.last_round is None
    server.publish(TOPICS.device("dev", "ack"), encode_message(Ack(round=3, device_id="dev", accepted=True)))  # type: ignore[attr-defined]
    bus.drain()
    assert agent.last_round == 3 and (tmp_path / "last-round").read_text() == "3"
    # Execute 2: an old task (a replay, a server behind the fleet), three times
    for _ in range(3):
        task(2)
    # Assert 2: refused once with the reason, then dropped and counted
    failures = [m for m in got if isinstance(m, Failure)]
    assert [(f.round, f.reason) for f in failures] == [(2, "stale-task: round 2, this board is on round 3")]
    assert agent.rejected["stale-task"] == 2
    # Execute 3: a task far ahead (forged on an unsigned fleet, say) trains, but moves no counter
    task(2**30)
    assert got[-1].round == 2**30 and agent.last_round == 3
    # after a restart, a task for the round it was counted in is passed too
    again = AgentCore("dev", TOPICS, bus.connect(), store, InstantRunner(), num_samples=4,
                      round_path=tmp_path / "last-round")  # fmt: skip
    again.start()
    assert again.last_round == 3


def test_a_board_whose_secure_round_failed_never_sends_its_update_in_the_clear(tmp_path: Path) -> None:
    from protocol import Failure, SecAggKeys, SecAggRoster

    class HeldRunner:  # trains when the test says
        def __init__(self) -> None:
            self.job: tuple[Task, TrainingDone] | None = None

        def start(self, task: Task, model_blob: bytes, done: TrainingDone, synthetic_blob: bytes | None = None) -> None:
            self.job = (task, done)

    # Prepare: a secure task; the board holds the model and starts training at once
    bus = InMemoryBus()
    store = BlobStore(tmp_path / "blobs")
    model_id = store.put(b"model")
    got, server = _server(bus)
    runner = HeldRunner()
    agent = AgentCore("dev", TOPICS, bus.connect(), store, runner, num_samples=4)
    agent.start()
    task = Task(round=1, device_id="dev", model_name="toy", model_id=model_id, model_size=5,
                config=TrainConfig(secure_aggregation=True), classes=CLASSES)  # fmt: skip
    server.publish(TOPICS.device("dev", "task"), encode_message(task))  # type: ignore[attr-defined]
    bus.drain()
    assert isinstance(got[0], SecAggKeys) and runner.job is not None
    # Execute: a roster it cannot share with (too few neighbours), then its training ends
    roster = SecAggRoster(1, "dev", ("dev", "other"), 1, 1, 3, {})
    server.publish(TOPICS.device("dev", "task"), encode_message(roster))  # type: ignore[attr-defined]
    bus.drain()
    runner.job[1](task, _trained(task))
    bus.drain()
    # Assert: it said it is out of the round, and its update never left
    assert isinstance(got[-1], Failure) and "secure aggregation" in got[-1].reason
    assert not any(isinstance(message, Update) for message in got) and agent.pending is None


def _trained(task: Task) -> Update:
    return Update(round=task.round, device_id=task.device_id, base_model_id=task.model_id, num_samples=4,
                  train_loss=0.1, train_accuracy=1.0, delta={"w": np.ones(2, dtype=np.float32)})  # fmt: skip

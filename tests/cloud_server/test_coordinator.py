"""The coordinator's round logic over the in-memory bus, with a fake device and a real journal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_server import Coordinator, CoordinatorConfig, FedAvg, SqliteJournal, StrategyConfig
from protocol import (
    Ack,
    BlobRequest,
    ConfigError,
    DeviceState,
    Failure,
    InMemoryBus,
    Task,
    Topics,
    Update,
    decode_message,
    encode_message,
)
from testing import raw_frame

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


def _pair(bus: InMemoryBus) -> tuple[Device, Device]:
    """Devices a (10 samples) and b (30) on the bus, registered."""
    a, b = Device(bus, "a"), Device(bus, "b")
    a.hello(10)
    b.hello(30)
    bus.drain()
    return a, b


def _answer(bus: InMemoryBus, a: Device, b: Device) -> None:
    """Both answer their latest task: a with a delta of ones (10 samples), b with fives (30)."""
    for device, value, samples in ((a, 1.0, 10), (b, 5.0, 30)):
        device.send("update", device.update(device.tasks()[-1], value, samples))
    bus.drain()


def test_duplicates_count_once_and_a_replay_in_a_later_round_is_refused_and_counted() -> None:
    # Prepare
    bus = InMemoryBus()
    coordinator = _coordinator(bus)
    a, b = _pair(bus)
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
    a, b = _pair(bus)
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


_frame = raw_frame  # a hand-written JSON header (what a hostile client can send)


def test_hostile_numbers_are_rejected_and_an_unexpected_error_drops_one_message_only() -> None:
    # Prepare
    bus = InMemoryBus()
    coordinator = _coordinator(bus)
    a, b = Device(bus, "a"), Device(bus, "b")
    evil = bus.connect()
    # Execute: an integer of 5,000 digits (Python's int() refuses it), an integer too large for a float,
    # a huge float, NaN: each once on a state topic, which every restart of a server reads again when retained
    for value in ("9" * 5000, "9" * 400, "1e999", "NaN", "-Infinity"):
        header = f'{{"type":"state","device_id":"a","state":"online","num_samples":{value}}}'
        evil.publish(TOPICS.device("a", "state"), _frame(header), retain=True)
    bus.drain()
    # Execute: a handler that fails in a way nobody foresaw
    original = coordinator._on_state
    coordinator._on_state = lambda device_id, state: 1 / 0  # type: ignore[assignment,method-assign,misc]
    b.hello()
    bus.drain()
    coordinator._on_state = original  # type: ignore[method-assign]
    a.hello()
    b.hello()
    bus.drain()
    # Assert: every hostile frame was counted, the failing one dropped, and the round opened afterwards
    assert coordinator.rejected["bad-frame"] == 5
    assert coordinator.rejected["internal-error"] == 1
    assert coordinator.round_progress() == (1, 0, 2)


def test_a_claimed_sample_count_counts_for_at_most_five_times_the_median() -> None:
    # Prepare: two honest devices with 10 samples each, one that claims 2**40
    bus = InMemoryBus()
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=1, min_devices=3, round_timeout_s=60)
    coordinator = Coordinator(config, FedAvg(StrategyConfig()), bus.connect(), START)
    coordinator.start()
    devices = [Device(bus, name) for name in ("a", "b", "liar")]
    for device, samples in zip(devices, (10, 10, 2**40)):
        device.hello(samples)
    bus.drain()
    # Execute
    for device, value, samples in zip(devices, (1.0, 1.0, 100.0), (10, 10, 2**40)):
        device.send("update", device.update(device.tasks()[0], value, samples))
    bus.drain()
    # Assert: the liar weighs 5 x median(10, 10, 2**40) = 50, not 2**40: (10 + 10 + 50 * 100) / 70
    np.testing.assert_allclose(coordinator.global_state["w"], np.full(3, 5020 / 70, dtype=np.float32), rtol=1e-6)


def test_label_counts_must_add_up_to_the_sample_count() -> None:
    bus = InMemoryBus()
    coordinator = _coordinator(bus)
    a = Device(bus, "a")
    a.send("state", DeviceState(device_id="a", state="online", num_samples=10, label_counts=(5.0, 5.0) + (0.0,) * 8))
    a.send("state", DeviceState(device_id="a", state="online", num_samples=10, label_counts=(1e12,) + (0.0,) * 9))
    bus.drain()
    assert coordinator.rejected["bad-label-counts"] == 1
    assert coordinator.devices["a"].label_counts == (5.0, 5.0) + (0.0,) * 8


def test_blobs_go_only_to_the_device_whose_task_names_them_and_within_a_budget() -> None:
    # Prepare
    bus = InMemoryBus()
    coordinator = _coordinator(bus)
    a, b = Device(bus, "a"), Device(bus, "b")
    a.hello()
    b.hello()
    chunks: list[bytes] = []
    a.transport.subscribe(TOPICS.device("a", "blob/chunk"))
    a.transport.set_handler(lambda topic, payload: chunks.append(payload) if "chunk" in topic else None)
    bus.drain()
    model = coordinator.global_id
    # Execute: a asks for its model four times (its budget), a fifth time, and for a blob no task names
    for _ in range(5):
        a.send("blob/req", BlobRequest(blob_id=model))
    a.send("blob/req", BlobRequest(blob_id="ab" * 32))
    bus.drain()
    # Assert
    assert len(chunks) == 4
    assert coordinator.rejected["rate-limited"] == 1 and coordinator.rejected["unwanted-blob"] == 1


def test_a_silent_device_gets_its_task_again_and_one_that_fetches_does_not() -> None:
    # Prepare: a clock the test moves; task re-sends after 30 s of silence, then 60 s
    now = [1000.0]
    bus = InMemoryBus()
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=1, min_devices=2, round_timeout_s=600,
                               task_resend_s=30)  # fmt: skip
    coordinator = Coordinator(config, FedAvg(StrategyConfig()), bus.connect(), START, clock=lambda: now[0])
    coordinator.start()
    silent, busy = Device(bus, "silent"), Device(bus, "busy")
    silent.hello()
    busy.hello()
    bus.drain()
    task = busy.tasks()[0]

    def at(seconds: float) -> None:
        now[0] = 1000.0 + seconds
        coordinator.tick()
        bus.drain()

    # Execute
    at(20)
    busy.send("blob/req", BlobRequest(blob_id=task.model_id, chunks=()))  # it has its task: fetching
    bus.drain()
    at(31)
    at(45)
    at(80)
    at(92)
    # Assert: the silent device got its task at 0, 31 and 92 s (30 s, then 60 s of silence); the busy one
    # was heard from at 20 s and got it again only after 30 s more (50 s), at the next tick (80 s)
    assert [t.round for t in silent.tasks()] == [1, 1, 1]
    assert [t.round for t in busy.tasks()] == [1, 1]
    assert silent.tasks()[1] == silent.tasks()[0]
    assert not coordinator.finished


def test_tasks_carry_the_fleets_classes_and_a_state_keeps_them_for_good(tmp_path: Path) -> None:
    # Prepare: a fleet of named classes on a real state dir
    classes = ("ant", "bee", "cat")
    bus = InMemoryBus()
    journal = SqliteJournal(tmp_path)
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=1, min_devices=1, classes=classes)
    coordinator = Coordinator(config, FedAvg(StrategyConfig()), bus.connect(), START, journal=journal)
    coordinator.start()
    a = Device(bus, "a")
    # Execute: counts of the wrong length are refused; a good state opens the round
    a.send("state", DeviceState(device_id="a", state="online", num_samples=4, label_counts=(2.0, 2.0)))
    a.send("state", DeviceState(device_id="a", state="online", num_samples=4, label_counts=(0.0, 1.0, 3.0)))
    bus.drain()
    # Assert
    assert coordinator.rejected["bad-label-counts"] == 1
    assert a.tasks()[0].classes == classes
    assert journal.classes() == classes
    journal.close()
    reopened = SqliteJournal(tmp_path)
    renumbered = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=1, classes=("bee", "ant", "cat"))
    with pytest.raises(ConfigError, match="numbers its classes ant, bee, cat"):
        Coordinator(renumbered, FedAvg(StrategyConfig()), InMemoryBus().connect(), START, journal=reopened)


def _evaluated(device: Device, task: Task, value: float, samples: int, accuracy: float) -> Update:
    update = device.update(task, value, samples)
    return Update(**{**update.__dict__, "eval_accuracy": accuracy})


@pytest.mark.parametrize("restart", [False, True])
def test_a_round_reports_the_same_figures_whether_or_not_the_server_restarted_in_it(
    tmp_path: Path, restart: bool
) -> None:
    # Prepare: a reports how the round's model does on its data (0.2, 10 samples), b (0.8, 30 samples)
    bus = InMemoryBus()
    coordinator = _coordinator(bus, SqliteJournal(tmp_path), rounds=1)
    a, b = _pair(bus)
    a.send("update", _evaluated(a, a.tasks()[0], 1.0, 10, 0.2))
    bus.drain()
    # Execute: with `restart`, the server dies after a's update and a new one resumes the round
    if restart:
        coordinator.transport.set_handler(lambda topic, payload: None)
        coordinator = _coordinator(bus, SqliteJournal(tmp_path), rounds=1)
        bus.drain()
    b.send("update", _evaluated(b, b.tasks()[-1], 5.0, 30, 0.8))
    bus.drain()
    # Assert: both updates count in the devices' accuracy, weighted: (0.2 x 10 + 0.8 x 30) / 40
    assert coordinator.finished
    result = coordinator.results[-1]
    assert result.device_accuracy == pytest.approx(0.65)
    assert result.train_loss == pytest.approx(0.5)
    np.testing.assert_array_equal(coordinator.global_state["w"], np.full(3, 4.0, dtype=np.float32))


@pytest.mark.parametrize("persistent", [False, True])
def test_a_device_revoked_mid_round_takes_its_update_and_only_its_update_out(tmp_path: Path, persistent: bool) -> None:
    # Prepare: three devices; a's and b's updates accepted, then a is revoked, then c answers
    from cloud_server.rounds._journal import Journal

    bus = InMemoryBus()
    revoked: set[str] = set()
    now = [0.0]
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=1, min_devices=2, round_timeout_s=60, settle_s=5)
    journal = SqliteJournal(tmp_path) if persistent else Journal()
    coordinator = Coordinator(config, FedAvg(StrategyConfig()), bus.connect(), START, journal=journal,
                              revoked=lambda: set(revoked), clock=lambda: now[0])  # fmt: skip
    coordinator.start()
    a, b, c = Device(bus, "a"), Device(bus, "b"), Device(bus, "c")
    for device, samples in ((a, 10), (b, 30), (c, 20)):
        device.hello(samples)
    bus.drain()
    now[0] += 10.0  # past the settle time: the round opens for all three
    coordinator.tick()
    bus.drain()
    assert all(len(device.tasks()) == 1 for device in (a, b, c))
    a.send("update", _evaluated(a, a.tasks()[-1], 100.0, 10, 0.0))
    b.send("update", _evaluated(b, b.tasks()[-1], 5.0, 30, 0.8))
    bus.drain()
    # Execute
    revoked.add("a")
    now[0] += 2.0
    coordinator.tick()
    c.send("update", _evaluated(c, c.tasks()[-1], 2.0, 20, 0.5))
    bus.drain()
    # Assert: the model and the figures are b's and c's alone: (30 x 5 + 20 x 2) / 50 = 3.8, (0.8 x 30 + 0.5 x 20) / 50
    assert coordinator.finished
    result = coordinator.results[-1]
    np.testing.assert_allclose(coordinator.global_state["w"], np.full(3, 3.8, dtype=np.float32), rtol=1e-6)
    assert result.devices == 2
    assert result.device_accuracy == pytest.approx(0.68)


def test_a_strategy_that_fails_to_plan_a_round_leaves_it_to_train_without_synthetic_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: a strategy whose synthetic data fails every round (a broken pool, a torch error)
    class Broken(FedAvg):
        def configure_synthetic(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise RuntimeError("the pool folder vanished")

    bus = InMemoryBus()
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=2, min_devices=2, round_timeout_s=60)
    coordinator = Coordinator(config, Broken(StrategyConfig()), bus.connect(), START)
    coordinator.start()
    a, b = Device(bus, "a"), Device(bus, "b")
    # Execute: two rounds
    a.hello(10)
    b.hello(30)
    bus.drain()
    for round_number in (1, 2):
        for device, value, samples in ((a, 1.0, 10), (b, 5.0, 30)):
            task = device.tasks()[-1]
            assert task.round == round_number
            device.send("update", device.update(task, value, samples))
        bus.drain()
    # Assert: both rounds ran, each saying why it sent nothing
    assert coordinator.finished and [r.round for r in coordinator.results] == [1, 2]
    assert all(
        r.metrics == {"sent": False, "why_not": "the strategy failed (RuntimeError)"} for r in coordinator.results
    )
    assert sum("could not make synthetic data" in r.getMessage() for r in caplog.records) == 2


def test_a_device_flooding_states_gets_its_task_once_per_interval_and_is_refused_past_its_rate() -> None:
    # Prepare: a journal that counts its device writes, and a clock the test moves
    from cloud_server.rounds._journal import Journal

    class CountingJournal(Journal):
        writes = 0

        def device_seen(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            CountingJournal.writes += 1

    now = [1000.0]
    bus = InMemoryBus()
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=1, min_devices=2, round_timeout_s=600,
                               task_resend_s=30.0, max_states_per_minute=30)  # fmt: skip
    coordinator = Coordinator(config, FedAvg(StrategyConfig()), bus.connect(), START, journal=CountingJournal(),
                              clock=lambda: now[0])  # fmt: skip
    coordinator.start()
    a, b = _pair(bus)
    assert len(a.tasks()) == 1 and CountingJournal.writes == 2
    # Execute: a flaps offline/online 200 times within a few seconds, then the same "online" 20 times later on
    for i in range(200):
        now[0] += 0.01
        a.send("state", DeviceState(device_id="a", state="offline" if i % 2 == 0 else "online", num_samples=10))
    bus.drain()
    flood_tasks, flood_writes = len(a.tasks()), CountingJournal.writes
    now[0] += 61
    for _ in range(20):
        now[0] += 1
        a.hello(10)
    bus.drain()
    # Assert: past 30 states a minute (its hello was one) they are refused and counted; the 29 taken re-sent
    # the task once (not once per return) and each wrote the journal (each changed the state); repeats write nothing
    assert coordinator.rejected["rate-limited"] == 171
    assert flood_tasks == 2  # the first task and one re-send
    assert flood_writes == 2 + 29
    assert CountingJournal.writes == flood_writes + 1  # a was left offline by the flood: back online, once
    assert len(a.tasks()) == 3  # 61 s later it came back: its task once more
    # and the round still closes
    _answer(bus, a, b)
    assert coordinator.finished


def test_a_replayed_state_or_will_is_told_apart_and_refused() -> None:
    # Prepare
    bus = InMemoryBus()
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=1, min_devices=5, round_timeout_s=60)
    coordinator = Coordinator(config, FedAvg(StrategyConfig()), bus.connect(), START)
    coordinator.start()
    a = Device(bus, "a")

    def state(kind: str, session: str, sequence: int) -> tuple[bool, int]:
        a.send("state", DeviceState(device_id="a", state=kind, num_samples=10, session=session, sequence=sequence))  # type: ignore[arg-type]
        bus.drain()
        return coordinator.devices["a"].online, coordinator.rejected["replayed-state"]

    run, later_run, other = "aa" * 8, "bb" * 8, "cc" * 8
    # Execute and assert, step by step: (online?, replays refused so far)
    assert state("online", run, 1) == (True, 0)
    assert state("online", run, 2) == (True, 0)
    assert state("online", run, 1) == (True, 1)  # an old "online" of this run: a replay
    assert state("offline", run, 0) == (False, 1)  # its will, when it drops
    assert state("offline", run, 0) == (False, 2)  # the same will again
    assert state("online", run, 3) == (True, 2)  # back (a reconnect within the run)
    assert state("offline", other, 0) == (True, 3)  # the will of a run that is not the current one
    assert state("online", later_run, 1) == (True, 3)  # a restart: a new run
    assert state("online", run, 3) == (True, 4)  # the old run's states stay refused
    assert state("offline", run, 0) == (True, 5)
    assert state("offline", later_run, 0) == (False, 5)  # the current run's will counts


def test_a_round_whose_checkpoint_cannot_be_written_is_kept_later_and_nothing_opens_before(tmp_path: Path) -> None:
    # Prepare: a journal whose disk fails twice when a round closes (full, or out of file descriptors)
    from protocol import GenflError

    class FailingJournal(SqliteJournal):
        failures_left = 2

        def round_closed(self, number: int, closed: object) -> None:  # type: ignore[override]
            if FailingJournal.failures_left:
                FailingJournal.failures_left -= 1
                raise GenflError("cannot write the round checkpoint ([Errno 24] Too many open files)")
            super().round_closed(number, closed)  # type: ignore[arg-type]

    now = [0.0]
    bus = InMemoryBus()
    config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=2, min_devices=2, round_timeout_s=600)
    journal = FailingJournal(tmp_path)
    coordinator = Coordinator(config, FedAvg(StrategyConfig()), bus.connect(), START, journal=journal,
                              clock=lambda: now[0])  # fmt: skip
    coordinator.start()
    a, b = _pair(bus)
    # Execute: round 1 completes; its write fails; time passes in steps
    _answer(bus, a, b)
    assert coordinator.results == [] and coordinator.checkpoint_failures == 1 and not coordinator.finished
    now[0] += 5
    coordinator.tick()
    assert coordinator.checkpoint_failures == 1  # not yet: once per retry interval
    late = a.update(a.tasks()[-1], 9.0, 10)
    a.send("update", late)  # an update for the aggregated round: refused, it changes nothing
    bus.drain()
    now[0] += 6
    coordinator.tick()  # the second failure
    bus.drain()
    assert coordinator.checkpoint_failures == 2 and [t.round for t in a.tasks()] == [1]
    now[0] += 10
    coordinator.tick()  # written: round 1 is kept, round 2 opens
    bus.drain()
    # Assert
    assert [r.round for r in coordinator.results] == [1] and [t.round for t in a.tasks()] == [1, 2]
    assert journal.checkpoint_path(1).is_file()
    np.testing.assert_array_equal(coordinator.global_state["w"], np.full(3, 4.0, dtype=np.float32))

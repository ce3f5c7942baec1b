"""Secure aggregation through the real coordinator on the in-memory bus: scripted boards run the real device side
(``SecureUpdate``), and drop out wherever a test says; the server unmasks the exact sum, or nothing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cloud_server import Coordinator, CoordinatorConfig, FedAvg, StrategyConfig, WeightedDeltaSum
from edge_agent import load_dataset
from edge_agent._secure_update import SecureUpdate
from protocol import (
    Ack,
    DeviceState,
    InMemoryBus,
    MaskedUpdate,
    SecAggForward,
    SecAggKeys,
    SecAggRoster,
    Task,
    Topics,
    TrainConfig,
    UnmaskRequest,
    Update,
    decode_message,
    decode_tensors,
    encode_message,
    encode_tensors,
)

FLEET = "unit"
TOPICS = Topics(FLEET)
START = {"w": np.zeros(6, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
PHASE_S, TIMEOUT_S = 10.0, 100.0


class Board:
    """A scripted board on the bus whose secure-aggregation side is the real one; each step is taken when the
    test says (or never: a dropout)."""

    def __init__(self, bus: InMemoryBus, index: int) -> None:
        self.device_id = f"board-{index:02d}"
        self.samples = 10 + 7 * index
        rng = np.random.default_rng(index)
        self.delta = {name: rng.normal(size=array.shape).astype(np.float32) for name, array in START.items()}
        self.transport = bus.connect()
        self.received: list[object] = []
        self.transport.set_handler(lambda topic, payload: self.received.append(decode_message(payload)))
        for channel in ("task", "ack"):
            self.transport.subscribe(TOPICS.device(self.device_id, channel))  # type: ignore[arg-type]
        self.secure: SecureUpdate | None = None

    def send(self, channel: str, message: object) -> None:
        self.transport.publish(TOPICS.device(self.device_id, channel), encode_message(message))  # type: ignore[arg-type]

    def last(self, kind: type) -> object:
        return [m for m in self.received if isinstance(m, kind)][-1]

    def hello(self) -> None:
        self.send("state", DeviceState(device_id=self.device_id, state="online", num_samples=self.samples))

    def lose_connection(self) -> None:  # what the broker publishes for it (its will)
        self.send("state", DeviceState(device_id=self.device_id, state="offline", num_samples=self.samples))

    def advertise(self) -> None:
        task = self.last(Task)
        assert isinstance(task, Task) and task.config.secure_aggregation
        self.secure = SecureUpdate(self.device_id, FLEET, task, self.samples)
        self.send("update", self.secure.keys)

    def share(self) -> None:
        assert self.secure is not None
        self.send("update", self.secure.on_roster(self.last(SecAggRoster)))  # type: ignore[arg-type]

    def train_and_mask(self, model_blob: bytes) -> None:
        assert self.secure is not None
        task = self.last(Task)
        assert isinstance(task, Task)
        assert self.secure.on_forward(self.last(SecAggForward)) is None  # type: ignore[arg-type]  # not trained yet
        update = Update(round=task.round, device_id=self.device_id, base_model_id=task.model_id,
                        num_samples=self.samples, train_loss=0.5, train_accuracy=0.5, delta=self.delta)  # fmt: skip
        masked = self.secure.on_trained(update, model_blob)
        assert masked is not None
        self.send("update", masked)

    def unmask(self) -> None:
        assert self.secure is not None
        self.send("update", self.secure.on_unmask(self.last(UnmaskRequest)))  # type: ignore[arg-type]


class Fleet:
    def __init__(self, boards: int) -> None:
        self.bus = InMemoryBus()
        self.now = [0.0]
        # (every board registers within the settle time, so that the round picks all of them)
        config = CoordinatorConfig(fleet=FLEET, model_name="toy", rounds=1, min_devices=2, settle_s=1.0,
                                   round_timeout_s=TIMEOUT_S, secure_aggregation=True, secagg_phase_s=PHASE_S,
                                   max_weight_ratio=None)  # fmt: skip
        self.server = Coordinator(config, FedAvg(StrategyConfig()), self.bus.connect(), START,
                                  clock=lambda: self.now[0])  # fmt: skip
        self.server.start()
        self.boards = [Board(self.bus, i) for i in range(boards)]
        for board in self.boards:
            board.hello()
        self.bus.drain()
        self.now[0] = 1.0
        self.server.tick()
        self.bus.drain()
        self.model_blob = encode_tensors(START)

    def step(self, action: str, skip: set[int] = frozenset(), wait_s: float = 0.0) -> None:  # type: ignore[assignment]
        for index, board in enumerate(self.boards):
            if index not in skip:
                if action == "train_and_mask":
                    board.train_and_mask(self.model_blob)
                else:
                    getattr(board, action)()
        self.bus.drain()
        if wait_s:  # the phase's deadline passes for the boards that did not answer
            self.now[0] += wait_s
            self.server.tick()
            self.bus.drain()

    def expected(self, indices: set[int]) -> dict[str, np.ndarray]:
        plain = WeightedDeltaSum(START)
        for index in sorted(indices):
            plain.add(self.boards[index].delta, self.boards[index].samples)
        return {name: (START[name] + value).astype(np.float32) for name, value in plain.mean().items()}


def _global(fleet: Fleet) -> dict[str, np.ndarray]:
    return decode_tensors(encode_tensors(fleet.server.global_state))


def test_three_of_ten_dropping_before_their_masked_update_leave_the_exact_sum_of_the_other_seven() -> None:
    fleet = Fleet(10)
    dropped = {2, 5, 9}
    fleet.step("advertise")
    fleet.step("share")
    fleet.step("train_and_mask", skip=dropped, wait_s=TIMEOUT_S)  # they shared, then went silent
    fleet.step("unmask", skip=dropped)  # (they are not asked)
    # Assert: the round closed on the other seven, bit for bit the plain mean of their updates
    result = fleet.server.results[0]
    assert result.devices == 7 and fleet.server.finished
    new = _global(fleet)
    assert all(np.array_equal(new[name], value) for name, value in fleet.expected(set(range(10)) - dropped).items())
    for index, board in enumerate(fleet.boards):
        acks = [m for m in board.received if isinstance(m, Ack)]
        assert [a.accepted for a in acks] == ([] if index in dropped else [True])
    # every unmask request named the three as dropped: their mask keys were rebuilt, their inputs never existed
    request = fleet.boards[0].last(UnmaskRequest)
    assert isinstance(request, UnmaskRequest) and set(request.dropped) == {fleet.boards[i].device_id for i in dropped}


def test_three_of_ten_dropping_after_their_masked_update_are_still_in_the_exact_sum() -> None:
    fleet = Fleet(10)
    gone = {0, 4, 7}
    fleet.step("advertise")
    fleet.step("share")
    fleet.step("train_and_mask")
    fleet.step("unmask", skip=gone)  # they sent their masked update, then vanished
    # the seven answers hold the threshold of shares of every seed: the round closed without its deadline
    assert fleet.now[0] == 1.0
    result = fleet.server.results[0]
    assert result.devices == 10
    new = _global(fleet)
    assert all(np.array_equal(new[name], value) for name, value in fleet.expected(set(range(10))).items())
    # a board that missed its ack sends its masked update again: it is told it counted (and so stops)
    back = fleet.boards[0]
    assert back.secure is not None and back.secure.masked is not None
    back.send("update", back.secure.masked)
    fleet.bus.drain()
    assert [a.accepted for a in back.received if isinstance(a, Ack)] == [True, True]


def test_with_fewer_unmasking_answers_than_the_threshold_the_round_waits_its_deadline_then_unmasks_nothing() -> None:
    fleet = Fleet(10)  # a complete graph of ten: threshold 5
    fleet.step("advertise")
    fleet.step("share")
    fleet.step("train_and_mask")
    fleet.step("unmask", skip={0, 1, 2, 3, 4, 5})  # four answer: no secret has its five shares
    assert not fleet.server.finished  # it waits for more answers until the phase's deadline
    fleet.now[0] += PHASE_S
    fleet.server.tick()
    fleet.bus.drain()
    assert fleet.server.finished and fleet.server.results[0].devices == 0
    assert "too few shares" in next(iter(fleet.server.results[0].failures))
    new = _global(fleet)
    assert all(np.array_equal(new[name], START[name]) for name in START)


def test_below_the_threshold_the_round_fails_without_asking_anyone_to_unmask() -> None:
    fleet = Fleet(10)  # a complete graph of ten: threshold 5
    fleet.step("advertise")
    fleet.step("share")
    fleet.step("train_and_mask", skip={0, 1, 2, 3, 4, 5}, wait_s=TIMEOUT_S)  # four masked updates
    # Assert: nothing unmasked (no request went out), the model unchanged, the four told their update did not count
    assert fleet.server.finished and fleet.server.results[0].devices == 0
    assert not any(isinstance(m, UnmaskRequest) for board in fleet.boards for m in board.received)
    new = _global(fleet)
    assert all(np.array_equal(new[name], START[name]) for name in START)
    for board in fleet.boards[6:]:
        assert [(a.accepted, a.reason) for a in board.received if isinstance(a, Ack)] == [
            (False, "secure aggregation failed")
        ]
    assert "secure aggregation failed" in next(iter(fleet.server.results[0].failures))
    late = fleet.boards[9]
    assert late.secure is not None and late.secure.masked is not None
    late.send("update", late.secure.masked)  # again, after the round: still not counted
    fleet.bus.drain()
    assert [(a.accepted, a.reason) for a in late.received if isinstance(a, Ack)][-1] == (False, "closed-round")


def test_devices_that_never_advertise_are_left_out_and_too_few_fail_the_round() -> None:
    # Prepare: ten picked, seven advertise in time
    fleet = Fleet(10)
    fleet.step("advertise", skip={1, 3, 8}, wait_s=PHASE_S)
    roster = fleet.boards[0].last(SecAggRoster)
    assert isinstance(roster, SecAggRoster) and len(roster.participants) == 7
    assert not any(isinstance(m, SecAggRoster) for m in fleet.boards[1].received)
    # a late key is refused, and counted
    late = SecureUpdate(fleet.boards[1].device_id, FLEET, fleet.boards[1].last(Task), 10)  # type: ignore[arg-type]
    fleet.boards[1].send("update", late.keys)
    fleet.bus.drain()
    assert fleet.server.rejected["secagg-late"] == 1
    # Execute: a round where only two advertise
    small = Fleet(4)
    small.step("advertise", skip={0, 1}, wait_s=PHASE_S)
    assert small.server.finished and small.server.results[0].devices == 0
    assert not any(isinstance(m, SecAggRoster) for board in small.boards for m in board.received)


def test_a_board_whose_connection_drops_is_not_waited_for_in_any_phase() -> None:
    fleet = Fleet(10)
    fleet.boards[3].lose_connection()  # picked, then gone before its keys
    fleet.step("advertise", skip={3})
    assert len(fleet.boards[0].last(SecAggRoster).participants) == 9  # type: ignore[attr-defined]
    fleet.boards[5].lose_connection()  # gone before its shares
    fleet.step("share", skip={3, 5})
    fleet.step("train_and_mask", skip={3, 5})
    # Assert: no phase waited for its deadline, and the sum is the eight who sent theirs
    assert fleet.now[0] == 1.0 and fleet.server.finished is False
    fleet.step("unmask", skip={3, 5, 9})
    assert fleet.now[0] == 1.0 and fleet.server.results[0].devices == 8
    fleet.step("unmask", skip=set(range(9)))  # the last answer, after the sum was unmasked: taken quietly
    assert fleet.server.rejected == {}
    new = _global(fleet)
    assert all(np.array_equal(new[name], value) for name, value in fleet.expected(set(range(10)) - {3, 5}).items())


def test_frames_out_of_turn_or_for_another_device_are_refused_and_the_round_goes_on() -> None:
    fleet = Fleet(4)
    fleet.step("advertise")
    victim, intruder = fleet.boards[0], fleet.boards[1]
    assert victim.secure is not None
    # another board's keys on one's own topic, other keys for the same round, shares before the roster's time
    intruder.send("update", victim.secure.keys)
    intruder.send("update", SecAggKeys(1, intruder.device_id, b"\x01" * 32, b"\x02" * 32))
    intruder.send("update", MaskedUpdate(1, intruder.device_id, victim.secure.model_id, b"\x00" * 8))
    fleet.bus.drain()
    rejected = fleet.server.rejected
    assert rejected["wrong-device"] == 1 and rejected["secagg-late"] + rejected["secagg-order"] >= 2
    fleet.step("share")
    plain = fleet.boards[3]  # an update in the clear has no place in a secure round
    task = plain.last(Task)
    assert isinstance(task, Task)
    clear = Update(round=1, device_id=plain.device_id, base_model_id=task.model_id, num_samples=plain.samples,
                   train_loss=0.5, train_accuracy=0.5, delta=plain.delta)  # fmt: skip
    plain.send("update", clear)
    fleet.bus.drain()
    assert fleet.server.rejected["secagg-plain"] == 1
    assert [(a.accepted, a.reason) for a in plain.received if isinstance(a, Ack)] == [(False, "secure aggregation")]
    again = fleet.boards[2]
    assert again.secure is not None
    again.send("update", again.secure.on_roster(again.last(SecAggRoster)))  # type: ignore[arg-type]  # a repeat
    fleet.bus.drain()
    fleet.step("train_and_mask")
    fleet.step("unmask")
    assert fleet.server.results[0].devices == 4
    assert all(np.array_equal(_global(fleet)[n], v) for n, v in fleet.expected({0, 1, 2, 3}).items())


def test_a_device_asked_to_unmask_again_with_other_names_reveals_nothing_more() -> None:
    fleet = Fleet(4)
    fleet.step("advertise")
    fleet.step("share")
    fleet.step("train_and_mask")
    board = fleet.boards[0]
    assert board.secure is not None
    request = board.last(UnmaskRequest)
    assert isinstance(request, UnmaskRequest)
    first = board.secure.on_unmask(request)
    assert board.secure.on_unmask(request) == first  # a redelivery: the same answer
    other = UnmaskRequest(request.round, request.device_id, request.survivors[:-1], request.survivors[-1:])
    with pytest.raises(Exception, match="other survivors"):
        board.secure.on_unmask(other)  # the seed and the key of one neighbour are never both given


def _attack(bias_delta: np.ndarray, config: TrainConfig) -> np.ndarray:
    """The label-histogram attack on a crafted round (classifier zeroed, two full-batch SGD steps): every logit is
    0, so each step moves the classifier's bias by ``lr * (n_c / N - 1 / C)`` (the second with momentum); read back,
    the bias delta gives the device's class proportions."""
    steps = 1.0 + (1.0 + config.momentum)
    return bias_delta / (config.learning_rate * steps) + 1.0 / len(bias_delta)


def test_the_label_histogram_attack_recovers_a_board_in_the_clear_and_nothing_of_one_under_secure_aggregation() -> None:
    import models
    from cloud_server.rounds._secure_round import SecureRound
    from edge_agent._data import LabeledArrays
    from edge_agent._runner import run_task
    from protocol import decode_delta, default_classes
    from protocol.secagg import round_context

    # Prepare: the crafted round (zeroed classifier, 2 epochs at batch 65,536, lr 1e-5) and three boards whose
    # histograms differ
    state = models.model_state(models.build_model("cnn-digits", seed=0))
    state["classifier.weight"][:] = 0.0
    state["classifier.bias"][:] = 0.0
    blob = encode_tensors(state)
    model_id = hashlib.sha256(blob).hexdigest()
    config = TrainConfig(local_epochs=2, batch_size=65536, learning_rate=1e-5, secure_aggregation=True)
    digits = load_dataset("digits").train
    wanted = {"a": {1: 28, 3: 27, 7: 33, 8: 34}, "b": {0: 40, 2: 10, 4: 25}, "c": {5: 30, 6: 30, 9: 12}}
    data = {}
    for board, counts in wanted.items():
        index = np.concatenate([np.flatnonzero(digits.labels == c)[:n] for c, n in counts.items()])
        data[board] = LabeledArrays(digits.images[index], digits.labels[index])
    truth = {b: np.bincount(d.labels, minlength=10) / len(d) for b, d in data.items()}
    classes = default_classes(10)
    tasks = {b: Task(round=1, device_id=b, model_name="cnn-digits", model_id=model_id, model_size=len(blob),
                     config=config, classes=classes) for b in data}  # fmt: skip
    updates = {b: run_task(tasks[b], blob, b, data[b], classes)[0] for b in data}
    # The attack works on an update in the clear: each board's proportions to within a point
    for board, update in updates.items():
        delta = decode_delta(update.delta, update.codec, state)
        assert np.abs(_attack(delta["classifier.bias"], config) - truth[board]).max() < 0.01
    # Execute: the same updates under secure aggregation; what the server holds is its view of the round
    server = SecureRound(round_context(FLEET, 1, model_id), 1, sorted(data), state, 0.0, PHASE_S, TIMEOUT_S)
    parties = {b: SecureUpdate(b, FLEET, tasks[b], len(data[b])) for b in data}
    for board, party in parties.items():
        server.receive(board, party.keys)
    for board, frame in server.step(0.0):
        server.receive(board, parties[board].on_roster(frame))  # type: ignore[arg-type]
    masked = {}
    for board, frame in server.step(0.0):
        assert parties[board].on_forward(frame) is None  # type: ignore[arg-type]
        masked[board] = parties[board].on_trained(updates[board], blob)
        server.receive(board, masked[board])  # type: ignore[arg-type]
    for board, frame in server.step(0.0):
        server.receive(board, parties[board].on_unmask(frame))  # type: ignore[arg-type]
    server.step(0.0)
    # Assert: a board's masked words say nothing of its histogram or its count (uniform 64-bit words)
    offset = 0  # the classifier's bias comes first in name order
    for board, frame in masked.items():
        assert frame is not None
        words = np.frombuffer(frame.words, dtype="<u8").view(np.int64)
        read = words[offset : offset + 10].astype(np.float64) / 2**24 / len(data[board])
        assert np.abs(_attack(read, config) - truth[board]).max() > 1.0
        weight_word = int(words[-5])
        assert weight_word != len(data[board]) and abs(weight_word) > 2**40
    # the sum gives the fleet's pooled histogram only: no single board's
    assert server.summed is not None
    total = sum(len(d) for d in data.values())
    pooled = _attack(server.summed.sums["classifier.bias"] / 2**24 / total, config)
    fleet_truth = sum(truth[b] * len(data[b]) for b in data) / total
    assert server.summed.total_weight == total and np.abs(pooled - fleet_truth).max() < 0.01
    assert all(np.abs(pooled - truth[b]).max() > 0.1 for b in data)


def test_what_needs_each_boards_update_is_refused_with_secure_aggregation_in_one_line() -> None:
    from cloud_server.learning._genfl_config import GenflConfig
    from protocol import ConfigError
    from simulation import SimulationConfig

    with pytest.raises(ConfigError, match="median rule needs each device's update"):
        SimulationConfig(secure_aggregation=True, aggregate="median")
    with pytest.raises(ConfigError, match="data-free generator"):
        SimulationConfig(secure_aggregation=True, strategy="genfl")
    with pytest.raises(ConfigError, match="data-free generator"):
        SimulationConfig(secure_aggregation=True, strategy="aigc-only")
    pool = SimulationConfig(secure_aggregation=True, strategy="genfl", genfl=GenflConfig(generator="pool",
                            synthetic_pool="pool"))  # fmt: skip
    assert pool.secure_aggregation and SimulationConfig(secure_aggregation=True, strategy="fedprox").secure_aggregation

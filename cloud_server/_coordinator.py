"""The coordinator's round logic, independent of the transport.

It keeps a registry of devices from their ``state`` messages, opens a round
when enough are online, publishes one task per picked device, serves model
blobs chunk by chunk, validates and accumulates updates as they arrive, and
closes the round when every picked device answered (an update or a reported
failure) or the deadline passed with at least ``min_devices`` updates.

Every change is written to a :class:`~cloud_server._journal.Journal` before
it is acknowledged, and a coordinator built on a journal that holds an open
round resumes it. Time comes from an injected clock, so tests and
simulations drive it without sleeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_ROUND_TIMEOUT_S,
    MIN_CHUNK_SIZE,
    Ack,
    BlobRequest,
    BlobStore,
    ConfigError,
    DeviceState,
    Failure,
    FrameGuard,
    GenflError,
    OpenGuard,
    Progress,
    ProtocolError,
    Task,
    TensorDict,
    Topics,
    TrainConfig,
    Transport,
    Update,
    decode_delta,
    decode_message,
    decode_tensors,
    default_classes,
    encode_message,
    encode_tensors,
    iter_chunks,
    validate_classes,
)

from ._aggregation import WeightedDeltaSum, check_update_shapes, l2_norm
from ._failures import failure_summary
from ._journal import AcceptedUpdate, Journal, OpenRoundRecord
from ._limits import ByteBudget
from ._strategy import Accumulator, DeviceInfo, FitResult, RoundPlan, RoundResults, Strategy, weighted_mean

__all__ = ["Coordinator", "CoordinatorConfig", "DeviceRecord", "RoundResult"]

log = logging.getLogger("genfl.server")

Evaluator = Callable[[TensorDict], "tuple[float, float] | None"]


@dataclass(frozen=True)
class CoordinatorConfig:
    fleet: str
    model_name: str
    rounds: int
    min_devices: int = 1
    round_timeout_s: float = DEFAULT_ROUND_TIMEOUT_S
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_update_norm: float | None = None  # reject updates whose L2 norm is larger
    # A device's weight (its claimed sample count) is capped at this many times the median claim of the
    # round's picked devices, so that no device decides the average by what it claims. None: no cap.
    max_weight_ratio: float | None = 5.0
    # A picked device that neither asked for a blob nor answered for this long gets its task again (then
    # after twice as long, and so on): a task or a chunk a broker lost (a cluster losing a node) costs a
    # wait, not the device's round. A device that has its task treats a copy as a repeat. None: never.
    task_resend_s: float | None = 30.0
    # Stop opening rounds after this many in a row in which no update came and every board that answered
    # reported a failure (a model that does not fit the boards' data, say): they cannot succeed. None: never.
    max_failed_rounds: int | None = 3
    # Seconds after start before any task goes out: the devices' retained states arrive first, and with them
    # the latest round each has taken (serve waits; a simulation, whose states come at once, need not).
    settle_s: float = 0.0
    # A state older than the fleet (a device has taken a later round than it knows: a restored backup, a copy)
    # stops the coordinator unless this is set; then it goes on from its model, numbering rounds after the fleet's.
    accept_older_state: bool = False
    # The fleet's class names in the model's order: every task carries them, and boards number their data by
    # them (serve and simulate set them; the default is the bundled digits' numbers).
    classes: tuple[str, ...] = default_classes(10)

    def __post_init__(self) -> None:
        validate_classes(self.classes)
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ConfigError("the update norm bound must be positive")
        if self.max_weight_ratio is not None and not self.max_weight_ratio >= 1.0:
            raise ConfigError(f"the weight cap ratio must be at least 1, got {self.max_weight_ratio}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if self.min_devices < 1:
            raise ConfigError(f"min devices must be at least 1, got {self.min_devices}")
        if self.round_timeout_s <= 0:
            raise ConfigError("round timeout must be positive")
        if not self.settle_s >= 0:
            raise ConfigError(f"the settle time must be 0 or more seconds, got {self.settle_s}")
        if self.task_resend_s is not None and not self.task_resend_s > 0:
            raise ConfigError("the task re-send interval must be positive")
        if self.max_failed_rounds is not None and self.max_failed_rounds < 1:
            raise ConfigError(f"max failed rounds must be at least 1, got {self.max_failed_rounds}")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= 256 * 1024 * 1024:
            raise ConfigError(f"chunk size must be 1 KiB..256 MiB, got {self.chunk_size}")


@dataclass
class DeviceRecord:
    device_id: str
    online: bool
    num_samples: int
    label_counts: tuple[float, ...] | None
    rounds: int = 0
    last_round: int | None = None  # the latest round the device says it took a task for


@dataclass(frozen=True)
class RoundResult:
    round: int
    selected: int
    devices: int  # updates accepted into the model
    accuracy: float | None
    loss: float | None
    train_loss: float
    seconds: float
    bytes_up: int
    bytes_down: int
    # The model the round started from, on the devices' own data (their reports before training, weighted)
    device_accuracy: float | None = None
    # The strategy's own figures of the round (GenFL: what it sent of synthetic data, "bytes", and the server
    # seconds it spent, "generator_s"); what the journal keeps as the round's report
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # the boards' failure reasons this round, counted


@dataclass
class _OpenRound:
    number: int
    configs: dict[str, TrainConfig]
    updates: Accumulator
    started: float
    bytes_up_at_start: int
    bytes_down_at_start: int
    fits: dict[str, FitResult] = field(default_factory=dict)  # per accepted device: what it reported
    failed: set[str] = field(default_factory=set)
    reasons: dict[str, str] = field(default_factory=dict)  # per failed device: its reason (first line)
    synthetic: dict[str, tuple[str, int]] = field(default_factory=dict)  # device -> (blob id, size)
    plan_metrics: dict[str, Any] = field(default_factory=dict)  # the strategy's figures of planning the round
    weight_cap: int | None = None  # no update counts more than this many samples
    budgets: dict[str, ByteBudget] = field(default_factory=dict)  # per device: blob bytes it may still ask for
    heard: dict[str, float] = field(default_factory=dict)  # per device: last task sent to it or word from it
    resend_after: dict[str, float] = field(default_factory=dict)  # per device: silence before its next re-send
    working: dict[str, float] = field(default_factory=dict)  # per device: seconds its job has run, as it said

    def weight(self, claimed: int) -> int:
        return claimed if self.weight_cap is None else min(claimed, self.weight_cap)

    def fold(
        self,
        update: AcceptedUpdate,
        delta: TensorDict,
        label_counts: tuple[float, ...] | None = None,
        probe_scores: tuple[int, ...] | None = None,
    ) -> None:
        """Count an accepted update in the round: the one place that does (accept, resume after a restart)."""
        self.updates.add(delta, update.num_samples, key=update.device_id)
        self.fits[update.device_id] = FitResult(
            num_samples=update.num_samples,
            train_loss=update.train_loss,
            train_accuracy=update.train_accuracy,
            eval_accuracy=update.eval_accuracy,
            label_counts=label_counts,
            probe_scores=probe_scores,
        )

    def unfold(self, update: AcceptedUpdate, delta: TensorDict) -> None:
        """Take an update that :meth:`fold` counted back out of the round (a device revoked mid-round)."""
        self.updates.remove(delta, update.num_samples, key=update.device_id)
        del self.fits[update.device_id]

    def results(self) -> RoundResults:
        """What the strategy aggregates: the folded deltas and, per accepted device, what it reported."""
        return RoundResults(self.number, self.updates, dict(self.fits))

    @property
    def accepted(self) -> set[str]:
        return set(self.fits)

    @property
    def answered(self) -> set[str]:
        return self.accepted | self.failed


def weight_cap(claims: list[int], ratio: float | None) -> int | None:
    """``ratio`` times the median claimed sample count (at least 1); None without a ratio or claims."""
    if ratio is None or not claims:
        return None
    return max(1, math.ceil(ratio * float(np.median(claims))))


def _scaled_counts(counts: tuple[float, ...] | None, claimed: int, weight: int) -> tuple[float, ...] | None:
    """Label counts scaled with a capped weight, so that they keep adding up to what the device counts for."""
    if counts is None or weight == claimed or claimed == 0:
        return counts
    return tuple(c * weight / claimed for c in counts)


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        strategy: Strategy,
        transport: Transport,
        initial_state: TensorDict,
        *,
        evaluator: Evaluator | None = None,
        on_round_closed: Callable[[RoundResult], None] | None = None,
        on_round_opened: Callable[[int, int], None] | None = None,
        on_update_accepted: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: BlobStore | None = None,
        journal: Journal | None = None,
        guard: FrameGuard | None = None,
        revoked: Callable[[], set[str]] | None = None,
    ) -> None:
        self.config = config
        self.strategy = strategy
        self.transport = transport
        self.topics = Topics(config.fleet)
        self.devices: dict[str, DeviceRecord] = {}
        self.rejected: Counter[str] = Counter()
        self.results: list[RoundResult] = []
        self.halted: str | None = None  # why no more rounds open (boards failing every round; an older state)
        self._settle_until = -math.inf  # start(): no task goes out before (the devices' states come first)
        self._republish = False  # the open round's tasks wait for the settle time to go out again
        self._failed_streak = 0  # rounds in a row that every answering board failed
        self.round_number = 0
        self._store = store or BlobStore()
        self._journal = journal or Journal()
        self._evaluator = evaluator
        self._on_round_closed = on_round_closed
        self._on_round_opened = on_round_opened
        self._on_update_accepted = on_update_accepted
        self._clock = clock
        self._open: _OpenRound | None = None
        self._guard = guard or OpenGuard()
        self._revoked_source = revoked
        self.revoked: set[str] = set()
        self._revoked_checked = -math.inf
        # sha256 of every update frame accepted -> its round: a byte-identical frame in a later round is a replay
        self._accepted_frames: dict[str, int] = {}
        if strategy.model_name not in (None, config.model_name) or strategy.classes not in ((), config.classes):
            raise ConfigError("the strategy was made for another model or class list than the fleet's")
        self._set_global(initial_state)
        resume = self._journal.resume()
        self._journal.start(config.model_name, config.fleet, self._global_blob, config.classes)  # or checks them
        if resume is not None:
            strategy.restore(self._journal.round_reports())
            self._set_global(decode_tensors(resume.global_blob))
            self.round_number = resume.round_number
            if resume.open_round is not None:
                self._restore(resume.open_round)
        transport.set_handler(self.on_message)

    def _set_global(self, state: TensorDict) -> None:
        self.global_state = state
        meta = {"model": self.config.model_name, "classes": json.dumps(list(self.config.classes))}
        self._global_blob = encode_tensors(state, meta)
        self.global_id = self._store.put(self._global_blob)

    def _restore(self, record: OpenRoundRecord) -> None:
        """Re-open a round from the journal, adding its accepted updates to a fresh accumulator."""
        current = self._new_round(record.number, record.configs, record.started)
        current.weight_cap = record.weight_cap
        for update in record.accepted:
            current.fold(update, decode_tensors(update.delta), self._label_counts(update.device_id))
        current.failed = set(record.failed)
        self._open = current
        log.info(
            "resumed round %d: %d of %d updates already accepted",
            record.number,
            len(current.accepted),
            len(record.configs),
        )

    @property
    def finished(self) -> bool:
        return self.halted is not None or (self.round_number >= self.config.rounds and self._open is None)

    def start(self) -> None:
        """Subscribe to the whole device tree: messages on unexpected topics are counted, not missed. The open
        round's tasks go out again once the devices' states had ``settle_s`` to arrive (at once without)."""
        self.transport.subscribe(f"{self.topics.root}/devices/#")
        self._settle_until = self._clock() + self.config.settle_s
        self._republish = self._open is not None
        if self.config.settle_s <= 0:
            self._after_settling()

    def _after_settling(self) -> None:
        self._republish = False
        if not self._check_not_behind_fleet() or self._open is None:
            return
        self._publish_tasks(self._open, sorted(set(self._open.configs) - self._open.answered))

    def _check_not_behind_fleet(self) -> bool:
        """False (and halted, or moved on with ``accept_older_state``) when a device has taken a later round
        than this state knows: publishing its tasks would take the fleet back."""
        ours = self._open.number if self._open is not None else self.round_number
        ahead = max((r.last_round or 0 for r in self.devices.values()), default=0)
        if ahead <= ours or self.halted is not None:
            return self.halted is None
        who = sorted(d for d, r in self.devices.items() if (r.last_round or 0) > ours)
        if not self.config.accept_older_state:
            self.halted = (
                f"{', '.join(who[:5])}{' ...' if len(who) > 5 else ''} took round {ahead}, but this state is at "
                f"round {ours}: it is older than the fleet (a restored backup, or a copy of the state), and its "
                "tasks would take the boards back. Serve the newest state, or give --accept-older-state to go on "
                f"from this state's model as round {ahead + 1}"
            )
            log.error("stopping: %s", self.halted)
            return False
        log.warning("this state is at round %d, the fleet at %d: going on from this model as round %d (asked for)",
                    ours, ahead, ahead + 1)  # fmt: skip
        current = self._open
        if current is not None:
            self._open = None  # the rounds it held are the fleet's past: their tasks are not sent again
            self._journal.round_closed(current.number, self._global_blob, self.global_id, total_weight=0,
                                       timed_out=True, accuracy=None, loss=None, train_loss=0.0)  # fmt: skip
        self.round_number = max(self.round_number, ahead)
        return True

    # -- messages -----------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """Handle one message; a bad one is logged and counted, never raised."""
        try:
            parsed = self.topics.parse(topic)
            if parsed.channel in ("task", "ack", "blob/chunk"):
                pass  # the server's own traffic to devices, seen through the wide subscription
            elif parsed.channel == "state" and not payload:
                pass  # an empty retained payload clears a state; nothing to register
            else:
                frame = self._guard.open(parsed.device_id, payload)  # signature, known and unrevoked device
                if parsed.channel in ("update", "blob/req") and self._open is not None:
                    self._open.heard[parsed.device_id] = self._clock()  # it has its task: no re-send needed
                if parsed.channel == "state":
                    self._on_state(parsed.device_id, decode_message(frame, DeviceState))
                elif parsed.channel == "update":
                    message: Update | Failure | Progress = decode_message(frame, (Update, Failure, Progress))
                    if isinstance(message, Update):
                        self._on_update(parsed.device_id, message, hashlib.sha256(payload).hexdigest())
                    elif isinstance(message, Progress):
                        self._on_progress(parsed.device_id, message)
                    else:
                        self._on_failure(parsed.device_id, message)
                elif parsed.channel == "blob/req":
                    self._on_blob_request(parsed.device_id, decode_message(frame, BlobRequest))
                else:
                    raise ProtocolError("unexpected-channel", parsed.channel)
        except ProtocolError as exc:
            self.count_rejected(exc.reason)
            log.warning("rejected a message on %s: %s", topic[:120], exc)
        except Exception:  # a bug or an input nobody foresaw: drop this message, keep serving the fleet
            self.count_rejected("internal-error")
            log.exception("dropped a message on %s after an unexpected error", topic[:120])
        self.tick()

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] += 1
        self._journal.rejected(reason)

    def _on_state(self, device_id: str, state: DeviceState) -> None:
        if state.device_id != device_id:
            raise ProtocolError("wrong-device", f"state for {state.device_id} on {device_id}'s topic")
        if state.label_counts is not None:
            if len(state.label_counts) != len(self.config.classes):
                raise ProtocolError("bad-label-counts", f"{device_id} counts {len(state.label_counts)} classes, "
                                    f"the fleet has {len(self.config.classes)}")  # fmt: skip
            total = math.fsum(state.label_counts)
            if min(state.label_counts) < 0 or abs(total - state.num_samples) > 0.01 * state.num_samples + 1:
                raise ProtocolError("bad-label-counts", f"{device_id}'s counts add up to {total:.0f}, "
                                    f"not its {state.num_samples} samples")  # fmt: skip
        record = self.devices.get(device_id)
        first = record is None  # since this coordinator started: maybe the broker's retained copy
        if record is None:
            record = self.devices[device_id] = DeviceRecord(device_id, False, 0, None)
            log.info("device %s registered (%d samples)", device_id, state.num_samples)
        # Back from offline (a restart, a lost connection): its task may be gone. An "online" it repeats while
        # online (a periodic refresh, new label counts) says nothing of that.
        came_back = state.state == "online" and not record.online
        record.online = state.state == "online"
        record.num_samples = state.num_samples
        record.label_counts = state.label_counts
        if state.last_round is not None:
            record.last_round = max(record.last_round or 0, state.last_round)
        self._journal.device_seen(device_id, record.online, state.num_samples, state.label_counts, retained=first)
        current = self._open
        if came_back and current is not None and device_id in set(current.configs) - current.answered:
            # It restarted, or the broker did: the task it had may be gone. A device that still
            # holds it treats the copy as a repeat (re-sends its update or resumes its download).
            log.info("round %d: %s is back; sending its task again", current.number, device_id)
            self._publish_tasks(current, [device_id])

    def _on_blob_request(self, device_id: str, request: BlobRequest) -> None:
        """Send the chunks asked for, of a blob the device's task names only, within its byte budget."""
        current = self._open
        if current is None or device_id not in current.configs or device_id in current.answered:
            raise ProtocolError("unwanted-blob", f"{device_id} has no task that needs blobs")
        named = {self.global_id: len(self._global_blob)}
        if device_id in current.synthetic:
            synthetic_id, synthetic_size = current.synthetic[device_id]
            named[synthetic_id] = synthetic_size
        if request.blob_id not in named:
            raise ProtocolError("unwanted-blob", f"{request.blob_id[:12]} is not named in {device_id}'s task")
        if not self._store.has(request.blob_id):
            raise ProtocolError("unknown-blob", request.blob_id[:12])
        budget = current.budgets.get(device_id)
        if budget is None:
            budget = current.budgets[device_id] = ByteBudget.for_task(sum(named.values()), self._clock())
        data = self._store.get(request.blob_id)
        chunks = list(iter_chunks(data, self.config.chunk_size, request.chunks))
        if not budget.take(sum(len(c.data) for c in chunks), self._clock()):
            raise ProtocolError("rate-limited", f"{device_id} asked for {request.blob_id[:12]} too often")
        topic = self.topics.device(device_id, "blob/chunk")
        for chunk in chunks:
            self.transport.publish(topic, self._guard.seal(encode_message(chunk)))

    def _check_round(self, device_id: str, claimed_device: str, round_number: int) -> _OpenRound:
        current = self._open
        if claimed_device != device_id:
            raise ProtocolError("wrong-device", f"message for {claimed_device} on {device_id}'s topic")
        if current is None or round_number != current.number:
            raise ProtocolError("closed-round", f"round {round_number}")
        if device_id not in current.configs:
            raise ProtocolError("not-selected", f"{device_id} was not picked for round {round_number}")
        return current

    def _on_update(self, device_id: str, update: Update, frame_digest: str) -> None:
        seen_in = self._accepted_frames.get(frame_digest)
        if seen_in is not None and (self._open is None or self._open.number != seen_in):
            # Byte-identical to an update accepted in an earlier round (in the same round it is a
            # QoS 1 redelivery or a re-send, acknowledged again below and counted once). It is not
            # used again; the ack tells a device that re-sends a kept copy after an outage that the
            # copy did count, so that it stops sending it.
            self._ack(device_id, update.round, True, "duplicate")
            raise ProtocolError("replay", f"{device_id}'s update of round {seen_in} sent again")
        try:
            current = self._check_round(device_id, update.device_id, update.round)
        except ProtocolError as exc:
            if exc.reason in ("closed-round", "not-selected"):
                # Tell the device, so that it drops an update it kept across an outage.
                self._ack(device_id, update.round, False, exc.reason)
            raise
        if device_id in current.accepted:
            self._ack(device_id, update.round, True, "duplicate")  # QoS 1 redelivery: ack again, count once
            return
        weight = current.weight(update.num_samples)
        try:
            delta, norm = self._validate(update, current.configs[device_id].codec, weight)
        except ProtocolError as exc:
            # The device answered, with something unusable: the round need not wait for it.
            if device_id not in current.failed:
                current.failed.add(device_id)
                self._journal.failure_recorded(update.round, device_id, f"rejected: {exc}")
            self._ack(device_id, update.round, False, exc.reason)
            raise
        record = AcceptedUpdate(
            device_id=device_id,
            num_samples=weight,  # what it counts for: the claim, capped
            train_loss=update.train_loss,
            train_accuracy=update.train_accuracy,
            norm=norm,
            delta=encode_tensors(delta),
            eval_accuracy=update.eval_accuracy,
        )
        try:
            self._journal.update_accepted(update.round, record)
        except GenflError as exc:
            log.error("could not persist %s's update for round %d, not acknowledged: %s", device_id, update.round, exc)
            return
        current.fold(record, delta, self._label_counts(device_id), update.probe_scores)
        self._accepted_frames[frame_digest] = update.round
        if device_id in self.devices:
            self.devices[device_id].rounds += 1
        self._ack(device_id, update.round, True)
        if self._on_update_accepted is not None:
            self._on_update_accepted(device_id)
        log.info(
            "round %d: update from %s accepted (weight %d, norm %.3g, %d/%d)",
            update.round, device_id, weight, record.norm, len(current.accepted), len(current.configs),
        )  # fmt: skip

    def _validate(self, update: Update, codec: str, weight: int) -> tuple[TensorDict, float]:
        """Decode and check an update against the global model: its delta and L2 norm, or ProtocolError."""
        if update.base_model_id != self.global_id:
            raise ProtocolError("stale-base", f"update built on {update.base_model_id[:12]}")
        if update.codec != codec:
            raise ProtocolError("wrong-codec", f"update in {update.codec}, the task asked for {codec}")
        delta = decode_delta(update.delta, update.codec, self.global_state)
        check_update_shapes(self.global_state, delta)
        WeightedDeltaSum.check_addable(delta, weight)  # what the round's sum would refuse, refused now
        norm = l2_norm(delta)
        if self.config.max_update_norm is not None and norm > self.config.max_update_norm:
            raise ProtocolError("norm-too-large", f"norm {norm:.3g} > {self.config.max_update_norm:.3g}")
        return delta, norm

    def _on_progress(self, device_id: str, progress: Progress) -> None:
        """A picked device at work on the open round has its task: no re-send (it was "heard" above)."""
        if progress.device_id != device_id:
            raise ProtocolError("wrong-device", f"progress for {progress.device_id} on {device_id}'s topic")
        current = self._open
        if current is not None and progress.round == current.number and device_id in current.configs:
            current.working[device_id] = progress.seconds
        # (a word on a round just closed crossed the close: nothing to do)

    def _on_failure(self, device_id: str, failure: Failure) -> None:
        current = self._check_round(device_id, failure.device_id, failure.round)
        if device_id in current.answered:
            return
        self._journal.failure_recorded(failure.round, device_id, failure.reason)
        current.failed.add(device_id)
        current.reasons[device_id] = failure_summary(failure.reason, device_id)
        log.warning("round %d: %s reports a failed training: %s", failure.round, device_id, failure.reason[:300])

    def _ack(self, device_id: str, round_number: int, accepted: bool, reason: str = "") -> None:
        ack = Ack(round=round_number, device_id=device_id, accepted=accepted, reason=reason)
        self.transport.publish(self.topics.device(device_id, "ack"), self._guard.seal(encode_message(ack)))

    # -- rounds -------------------------------------------------------------------------------

    def round_progress(self) -> tuple[int, int, int] | None:
        """(round, devices that answered, devices picked) of the open round, if one is open."""
        current = self._open
        return None if current is None else (current.number, len(current.answered), len(current.configs))

    def online_devices(self) -> list[str]:
        return sorted(d for d, r in self.devices.items() if r.online and d not in self.revoked)

    def _check_revocations(self) -> None:
        """Once a second: devices revoked since (``genfl-server devices revoke``) leave at once; re-admitted ones
        come back."""
        if self._revoked_source is None or self._clock() - self._revoked_checked < 1.0:
            return
        self._revoked_checked = self._clock()
        now_revoked = self._revoked_source()
        for device_id in sorted(self.revoked - now_revoked):  # enrolled again (``devices add --readmit``)
            self.revoked.discard(device_id)
            log.info("device %s was re-admitted with a new key: it may be picked again", device_id)
        newly = now_revoked - self.revoked
        for device_id in sorted(newly):
            self.revoked.add(device_id)
            if device_id in self.devices:
                self.devices[device_id].online = False
            current = self._open
            if current is not None and device_id in current.configs:
                self._withdraw(current, device_id)
            log.warning("device %s is revoked: no longer picked, its updates are refused", device_id)

    def _withdraw(self, current: _OpenRound, device_id: str) -> None:
        """Take a revoked device out of the open round, its already-accepted update included."""
        if device_id in current.accepted:
            update = self._journal.accepted_update(current.number, device_id)
            if update is None:
                log.error("round %d: %s's accepted update is not in the journal; it cannot be taken back",
                          current.number, device_id)  # fmt: skip
            else:
                current.unfold(update, decode_tensors(update.delta))
                self._journal.update_withdrawn(current.number, device_id)
        if device_id not in current.failed:
            current.failed.add(device_id)
            self._journal.failure_recorded(current.number, device_id, "revoked")

    def tick(self) -> None:
        """Open or close rounds as the registry and the clock say."""
        self._check_revocations()
        if self._clock() < self._settle_until:
            return
        if self._republish:
            self._after_settling()
        current = self._open
        if current is not None:
            everyone = current.answered >= set(current.configs)
            late = self._clock() - current.started >= self.config.round_timeout_s
            if everyone or late:
                self._close_round(current, timed_out=not everyone)
            else:
                self._resend_silent_tasks(current)
            return
        wanted = self.halted is None and self.round_number < self.config.rounds
        if wanted and len(self.online_devices()) >= self.config.min_devices and self._check_not_behind_fleet():
            self._open_round(self.round_number + 1)

    def _new_round(self, number: int, configs: dict[str, TrainConfig], started: float) -> _OpenRound:
        return _OpenRound(
            number=number,
            configs=configs,
            updates=self.strategy.new_accumulator(self.global_state),
            started=started,
            bytes_up_at_start=self.transport.bytes_received,
            bytes_down_at_start=self.transport.bytes_sent,
        )

    def _open_round(self, number: int) -> None:
        configs = self.strategy.configure_round(number, self.online_devices())
        cap = weight_cap([self.devices[d].num_samples for d in configs], self.config.max_weight_ratio)
        picked = {}
        for device_id in configs:
            record = self.devices[device_id]
            weight = record.num_samples if cap is None else min(record.num_samples, cap)
            picked[device_id] = DeviceInfo(weight, _scaled_counts(record.label_counts, record.num_samples, weight))
        try:
            plan = self.strategy.configure_synthetic(number, self.global_state, configs, picked)
        except Exception:  # a generator that fails (a broken pool, a torch error) must not take the fleet down
            log.exception("round %d: the strategy could not make synthetic data; the round trains without", number)
            plan = RoundPlan(configs)
        configs = plan.configs
        current = self._new_round(number, configs, self._clock())
        current.weight_cap = cap
        current.synthetic = {d: (self._store.put(blob), len(blob)) for d, blob in plan.synthetic.items()}
        current.plan_metrics = dict(plan.metrics)

        self._journal.round_opened(number, current.started, self.global_id, configs, cap)
        self._open = current
        self.round_number = number
        log.info("round %d: %d devices picked", number, len(configs))
        if self._on_round_opened is not None:
            self._on_round_opened(number, len(configs))
        self._publish_tasks(current, sorted(configs))

    def _resend_silent_tasks(self, current: _OpenRound) -> None:
        first_wait = self.config.task_resend_s
        if first_wait is None:
            return
        now = self._clock()
        silent = [
            device_id
            for device_id in sorted(set(current.configs) - current.answered)
            if now - current.heard.get(device_id, current.started) >= current.resend_after.get(device_id, first_wait)
        ]
        for device_id in silent:
            wait = current.resend_after.get(device_id, first_wait)
            log.info("round %d: no word from %s for %.0f s; sending its task again", current.number, device_id, wait)
            current.resend_after[device_id] = min(2 * wait, self.config.round_timeout_s)
        if silent:
            self._publish_tasks(current, silent)

    def _publish_tasks(self, current: _OpenRound, device_ids: list[str]) -> None:
        for device_id in device_ids:
            current.heard[device_id] = self._clock()
            synthetic_id, synthetic_size = current.synthetic.get(device_id, (None, 0))

            task = Task(
                round=current.number,
                device_id=device_id,
                model_name=self.config.model_name,
                model_id=self.global_id,
                model_size=len(self._global_blob),
                config=current.configs[device_id],
                classes=self.config.classes,
                synthetic_id=synthetic_id,
                synthetic_size=synthetic_size,
            )
            self.transport.publish(self.topics.device(device_id, "task"), self._guard.seal(encode_message(task)))

    def _note_failures(self, current: _OpenRound, accepted: int, failures: dict[str, int]) -> None:
        """Say by reason why boards failed; stop opening rounds after ``max_failed_rounds`` that all failed."""
        if failures:
            reasons = "; ".join(f"{count} x {reason}" for reason, count in failures.items())
            log.warning("round %d: %d board(s) failed: %s", current.number, len(current.failed), reasons)
        if accepted > 0 or not current.failed:
            self._failed_streak = 0
            return
        self._failed_streak += 1
        limit = self.config.max_failed_rounds
        if limit is not None and self._failed_streak >= limit:
            top = next(iter(failures), "no reason given")
            self.halted = (
                f"{self._failed_streak} rounds in a row failed on every board that answered (most often: {top}); "
                "no more rounds are opened: fix the cause, then serve again to go on"
            )
            log.error("stopping: %s", self.halted)

    def _aggregate(self, current: _OpenRound) -> dict[str, Any]:
        """The new global model from the round's updates (only with enough of them, and only if it is finite),
        and the round's metrics: the plan's, the evaluation's and the aggregation's."""
        results = current.results()
        metrics = {**current.plan_metrics, **self.strategy.aggregate_evaluate(results)}
        accepted = len(current.accepted)
        if accepted < self.config.min_devices:
            log.warning("round %d: %d updates < min devices %d; model unchanged", current.number, accepted,
                        self.config.min_devices)  # fmt: skip
            return metrics
        new_state, fit_metrics = self.strategy.aggregate_fit(self.global_state, results)
        if all(np.isfinite(value).all() for value in new_state.values() if value.dtype.kind == "f"):
            self._set_global(new_state)
        else:  # never send devices a model they cannot train from
            log.error("round %d: the new global model is not finite; keeping the previous one", current.number)
        return {**metrics, **fit_metrics}

    def _label_counts(self, device_id: str) -> tuple[float, ...] | None:
        record = self.devices.get(device_id)
        return None if record is None else record.label_counts

    def _round_result(self, current: _OpenRound, failures: dict[str, int], metrics: dict[str, Any]) -> RoundResult:
        evaluation = self._evaluator(self.global_state) if self._evaluator else None
        device_accuracy = metrics.pop("device_accuracy", None)
        metrics.pop("teacher_accuracy", None)
        return RoundResult(
            round=current.number,
            selected=len(current.configs),
            devices=len(current.accepted),
            accuracy=None if evaluation is None else evaluation[1],
            loss=None if evaluation is None else evaluation[0],
            train_loss=weighted_mean(current.fits, "train_loss") or 0.0,
            seconds=self._clock() - current.started,
            bytes_up=self.transport.bytes_received - current.bytes_up_at_start,
            bytes_down=self.transport.bytes_sent - current.bytes_down_at_start,
            device_accuracy=device_accuracy,
            metrics=metrics,
            failures=failures,
        )

    def _close_round(self, current: _OpenRound, *, timed_out: bool) -> None:
        """Aggregate the round (if enough answered), journal it, report it and open the next."""
        metrics = self._aggregate(current)
        if timed_out:
            missing = sorted(set(current.configs) - current.answered)
            log.warning("round %d timed out; left out: %s", current.number, ", ".join(missing))
        for blob, _ in current.synthetic.values():
            self._store.discard(blob)  # a synthetic batch is for one round only
        failures = dict(Counter(current.reasons.values()).most_common())
        if len(current.failed) > len(current.reasons):  # failed before a restart: the reason is in the journal
            failures["(recorded before a restart)"] = len(current.failed) - len(current.reasons)
        self._note_failures(current, len(current.accepted), failures)
        result = self._round_result(current, failures, metrics)
        self._journal.round_closed(
            current.number,
            self._global_blob,
            self.global_id,
            total_weight=current.updates.total_weight,
            timed_out=timed_out,
            accuracy=result.accuracy,
            loss=result.loss,
            train_loss=result.train_loss,
            report=result.metrics or None,
            bytes_up=result.bytes_up,
            bytes_down=result.bytes_down,
        )
        self._open = None
        self.results.append(result)
        log.info(
            "round %d closed: %d/%d updates, accuracy %s",
            current.number,
            result.devices,
            len(current.configs),
            "-" if result.accuracy is None else f"{result.accuracy:.4f}",
        )
        if self._on_round_closed is not None:
            self._on_round_closed(result)
        self.tick()

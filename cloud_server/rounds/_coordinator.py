"""The coordinator's round logic, independent of the transport.

It keeps a registry of devices from their ``state`` messages, opens a round
when enough are online, publishes one task per picked device, serves model
blobs chunk by chunk, validates and accumulates updates as they arrive, and
closes the round when every picked device answered (an update or a reported
failure) or the deadline passed with at least ``min_devices`` updates.

Every change is written to a :class:`~cloud_server.rounds._journal.Journal` before
it is acknowledged, and a coordinator built on a journal that holds an open
round resumes it. Time comes from an injected clock, so tests and
simulations drive it without sleeping.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from protocol import (
    Ack,
    BlobRequest,
    BlobStore,
    ConfigError,
    DeviceState,
    Failure,
    FrameGuard,
    GenflError,
    MaskedUpdate,
    OpenGuard,
    Progress,
    ProtocolError,
    Release,
    SecAggUnmask,
    Task,
    TensorDict,
    Topics,
    TrainConfig,
    Transport,
    Update,
    decode_tensors,
    encode_message,
    encode_tensors,
)
from protocol.secagg import round_context

from ..learning._aggregation import WeightedDeltaSum
from ..learning._strategy import DeviceInfo, RoundPlan, Strategy
from ._blob_serving import blob_chunks
from ._config import CoordinatorConfig, DeviceRecord
from ._dispatch import Handlers, dispatch
from ._failures import failure_summary
from ._journal import AcceptedUpdate, ClosedRound, Journal, OpenRoundRecord
from ._release_serving import ReleaseServing
from ._round import OpenRound, RoundHooks, RoundResult, scaled_counts, weight_cap
from ._round_privacy import RoundPrivacy
from ._secure_round import SecAggFrame, SecureRound
from ._validation import RateLimit, check_fresh_state, check_round, check_state, validated_delta

__all__ = ["Coordinator", "CoordinatorConfig", "DeviceRecord", "RoundHooks", "RoundResult"]

log = logging.getLogger("genfl.server")

CHECKPOINT_RETRY_S = 10.0  # a closed round whose journal write failed is written again this often

Evaluator = Callable[[TensorDict], "tuple[float, float] | None"]


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        strategy: Strategy,
        transport: Transport,
        initial_state: TensorDict,
        *,
        evaluator: Evaluator | None = None,
        hooks: RoundHooks = RoundHooks(),
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
        self._hooks = hooks
        self._clock = clock
        self._open: OpenRound | None = None
        self._guard = guard or OpenGuard()
        self._revoked_source = revoked
        self.revoked: set[str] = set()
        self._revoked_checked = -math.inf
        # sha256 of every update frame accepted -> its round: a byte-identical frame in a later round is a replay
        self._accepted_frames: dict[str, int] = {}
        # a round aggregated whose journal write failed: (its result, what to write, when last tried)
        self._closing: tuple[RoundResult, ClosedRound, float] | None = None
        self.checkpoint_failures = 0  # journal writes of a closed round that failed (and were tried again)
        self._state_limit = RateLimit(config.max_states_per_minute, 60.0)
        self.privacy = RoundPrivacy(config.secure_aggregation, config.privacy, config.min_devices)
        self._last_secure: tuple[int, frozenset[str]] | None = None  # the last secure round closed: whose sum it is
        self.releases = ReleaseServing()  # the model the boards are told to run
        if strategy.model_name not in (None, config.model_name) or strategy.classes not in ((), config.classes):
            raise ConfigError("the strategy was made for another model or class list than the fleet's")
        self._set_global(initial_state)
        resume = self._journal.resume()
        self._journal.start(config.model_name, config.fleet, self._global_blob, config.classes)  # or checks them
        if resume is not None:
            strategy.restore(self._journal.round_reports())
            self.privacy.restore(self._journal.round_reports())
            self._set_global(decode_tensors(resume.global_blob))
            self.round_number = resume.round_number
            if resume.open_round is not None:
                self._restore(resume.open_round)
        transport.set_handler(self.on_message)

    def _handlers(self) -> Handlers:
        return Handlers(self._on_state, self._on_update, self._on_progress, self._on_failure,
                        self._on_blob_request, self._heard, self._on_secagg)  # fmt: skip

    def _heard(self, device_id: str) -> None:
        if self._open is not None:
            self._open.heard[device_id] = self._clock()  # it has its task: no re-send needed

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
        if any(config.secure_aggregation for config in record.configs.values()):
            current.secure = self._secure_round(current)
            current.secure.abandon("the server restarted during the round: its secrets were in memory")
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
            self._journal.round_closed(current.number, ClosedRound(self._global_blob, self.global_id, timed_out=True))
        self.round_number = max(self.round_number, ahead)
        return True

    # -- messages -----------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """Handle one message; a bad one is logged and counted, never raised."""
        try:
            dispatch(self.topics, self._guard, topic, payload, self._handlers())
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
        check_state(device_id, state, len(self.config.classes))
        now = self._clock()
        if not self._state_limit.allow(device_id, now):
            raise ProtocolError(
                "rate-limited", f"{device_id} sent over {self.config.max_states_per_minute} states a minute"
            )
        record = self.devices.get(device_id)
        first = record is None  # since this coordinator started: maybe the broker's retained copy
        if record is None:
            record = self.devices[device_id] = DeviceRecord(device_id, False, 0, None)
            log.info("device %s registered (%d samples)", device_id, state.num_samples)
        check_fresh_state(record, state)
        before = (record.online, record.num_samples, record.label_counts, record.last_round)
        # Back from offline (a restart, a lost connection): its task may be gone. An "online" it repeats while
        # online (a periodic refresh, new label counts) says nothing of that.
        came_back = state.state == "online" and not record.online
        record.online = state.state == "online"
        record.num_samples = state.num_samples
        record.label_counts = state.label_counts
        if state.last_round is not None:
            record.last_round = max(record.last_round or 0, state.last_round)
        if first or before != (record.online, record.num_samples, record.label_counts, record.last_round):
            self._journal.device_seen(device_id, record.online, state.num_samples, state.label_counts, retained=first)
        self._note_release(record, state, came_back or first)
        current = self._open
        if came_back and current is not None and device_id in set(current.configs) - current.answered:
            # It restarted, or the broker did: the task it had may be gone. A device that still holds it
            # treats the copy as a repeat (re-sends its update or resumes its download). At most once per
            # re-send interval: a device flapping online/offline does not get a task per flap.
            last = current.resent_on_return.get(device_id)
            if last is None or now - last >= (self.config.task_resend_s or self.config.round_timeout_s):
                current.resent_on_return[device_id] = now
                log.info("round %d: %s is back; sending its task again", current.number, device_id)
                self._publish_tasks(current, [device_id])

    def _on_blob_request(self, device_id: str, request: BlobRequest) -> None:
        if self.releases.serves(request.blob_id):
            chunks = self.releases.chunks(device_id, request, self._store, self.config.chunk_size, self._clock())
        else:
            named = {self.global_id: len(self._global_blob)}
            chunks = blob_chunks(self._open, device_id, request, named, self._store, self.config.chunk_size,
                                 self._clock())  # fmt: skip
        topic = self.topics.device(device_id, "blob/chunk")
        for chunk in chunks:
            self.transport.publish(topic, self._guard.seal(encode_message(chunk)))

    # -- model releases -------------------------------------------------------------------------

    def offer_release(self, release: Release, frame: bytes, model: bytes) -> None:
        """Make ``release`` the fleet's: every online board that does not run it is told now, one that comes
        online later when it does (``frame``: as the release book sealed it)."""
        if not self.releases.offer(release, frame, model, self._store):
            return
        log.info("%s: telling the fleet", release.describe())
        for device_id in self.online_devices():
            if self.releases.wanted_by(self.devices[device_id].release):
                self._tell_release(device_id)

    def _note_release(self, record: DeviceRecord, state: DeviceState, arrived: bool) -> None:
        """What release a device says it runs (journalled when it changes); one that just came online and runs
        another than the current one is told of it."""
        if (state.release, state.release_score) != (record.release, record.release_score):
            record.release, record.release_score = state.release, state.release_score
            self._journal.device_release(record.device_id, state.release, state.release_score)
        if arrived and record.online and self.releases.wanted_by(state.release):
            self._tell_release(record.device_id)

    def _tell_release(self, device_id: str) -> None:
        self.transport.publish(self.topics.device(device_id, "task"), self.releases.frame)

    def _check_round(self, device_id: str, claimed_device: str, round_number: int) -> OpenRound:
        return check_round(self._open, device_id, claimed_device, round_number)

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
        if current.secure is not None:  # the server takes no update in the clear in a secure round
            self._ack(device_id, update.round, False, "secure aggregation")
            raise ProtocolError("secagg-plain", f"{device_id} sent its update in the clear in a secure round")
        if device_id in current.accepted:
            self._ack(device_id, update.round, True, "duplicate")  # QoS 1 redelivery: ack again, count once
            return
        weight = 1 if self.privacy.weighs_alike else current.weight(update.num_samples)
        try:
            codec = current.configs[device_id].codec
            delta, norm = validated_delta(update, codec, weight, self.global_id, self.global_state,
                                          self.config.max_update_norm)  # fmt: skip
            delta = self.privacy.clipped(delta)
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
        if self._hooks.on_update_accepted is not None:
            self._hooks.on_update_accepted(device_id)
        log.info(
            "round %d: update from %s accepted (weight %d, norm %.3g, %d/%d)",
            update.round, device_id, weight, record.norm, len(current.accepted), len(current.configs),
        )  # fmt: skip

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

    def _withdraw(self, current: OpenRound, device_id: str) -> None:
        """Take a revoked device out of the open round, its already-accepted update included."""
        if current.secure is not None and device_id in current.secure.sent_masked:
            current.secure.abandon(f"{device_id} was revoked after its masked update joined the sum")
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
        if self._closing is not None:
            self._keep_closing_round()  # a round aggregated but not yet kept on disk: nothing opens before it is
            return
        current = self._open
        if current is not None and current.secure is not None:
            self._step_secure(current, current.secure)
            return
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

    def _new_round(self, number: int, configs: dict[str, TrainConfig], started: float) -> OpenRound:
        return OpenRound(
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
            picked[device_id] = DeviceInfo(weight, scaled_counts(record.label_counts, record.num_samples, weight))
        try:
            plan = self.strategy.configure_synthetic(number, self.global_state, configs, picked)
        except Exception as exc:  # a generator that fails (a broken pool, a torch error) must not take the fleet down
            log.exception("round %d: the strategy could not make synthetic data; the round trains without", number)
            plan = RoundPlan(configs, metrics={"sent": False, "why_not": f"the strategy failed ({type(exc).__name__})"})
        configs = self.privacy.configs(plan.configs, cap)
        sampling_rate = len(configs) / max(1, len(self.online_devices()))
        refusal = self.privacy.refusal(sampling_rate)
        if refusal is not None:
            self.halted = refusal
            log.warning("stopping: %s", refusal)
            return
        self.privacy.warn_if_noisy(number, self.global_state, len(configs))
        current = self._new_round(number, configs, self._clock())
        current.weight_cap = cap
        current.sampling_rate = sampling_rate
        if self.config.secure_aggregation:
            current.secure = self._secure_round(current)
        current.synthetic = {d: (self._store.put(blob), len(blob)) for d, blob in plan.synthetic.items()}
        current.plan_metrics = dict(plan.metrics)

        self._journal.round_opened(number, current.started, self.global_id, configs, cap)
        self._open = current
        self.round_number = number
        log.info("round %d: %d devices picked", number, len(configs))
        if self._hooks.on_round_opened is not None:
            self._hooks.on_round_opened(number, len(configs))
        self._publish_tasks(current, sorted(configs))

    def _resend_silent_tasks(self, current: OpenRound) -> None:
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

    # -- secure aggregation ---------------------------------------------------------------------

    def _secure_round(self, current: OpenRound) -> SecureRound:
        context = round_context(self.config.fleet, current.number, self.global_id)
        return SecureRound(context, current.number, sorted(current.configs), self.global_state, current.started,
                           self.config.secagg_phase_s, self.config.round_timeout_s)  # fmt: skip

    def _on_secagg(self, device_id: str, frame: SecAggFrame) -> None:
        current = self._open
        if current is None or current.secure is None or frame.round != current.number:
            last = self._last_secure
            if isinstance(frame, MaskedUpdate) and last is not None and last[0] == frame.round:
                # a board re-sending its masked update (our ack was lost): tell it whether it counted, so it stops
                self._ack(device_id, frame.round, device_id in last[1], "" if device_id in last[1] else "closed-round")
                return
            if isinstance(frame, SecAggUnmask) and last is not None and last[0] == frame.round and device_id in last[1]:
                # a survivor's answer after the sum was unmasked from its neighbours' (the round needed no more)
                log.debug("round %d: %s's unmasking answer came after the sum was unmasked", frame.round, device_id)
                return
            raise ProtocolError("closed-round", f"a {frame.TYPE} of round {frame.round} from {device_id}")
        if device_id in self.revoked:
            raise ProtocolError("revoked", device_id)
        current.secure.receive(device_id, frame)

    def _step_secure(self, current: OpenRound, secure: SecureRound) -> None:
        """Move the round's exchange on (its frames out), and close the round once the sum is unmasked or the
        exchange failed; tasks are sent again to the silent while keys are being collected. No phase waits for a
        device that failed or whose connection dropped (its secrets were in its memory: it is out of the round)."""
        offline = {d for d in current.configs if d in self.devices and not self.devices[d].online}
        for device_id, frame in secure.step(self._clock(), frozenset(current.failed | offline)):
            self.transport.publish(self.topics.device(device_id, "task"), self._guard.seal(encode_message(frame)))
        if not secure.finished:
            if secure.phase == "keys":
                self._resend_silent_tasks(current)
            return
        if secure.summed is not None:  # the round's sum, as the plain streaming sum would hold it
            summed = secure.summed
            total = WeightedDeltaSum(self.global_state)
            total.restore(summed.sums, summed.total_weight, len(secure.survivors))
            current.updates = total
            current.secure_accepted = secure.survivors
            current.pooled = {"train_loss": summed.train_loss, "train_accuracy": summed.train_accuracy,
                              "eval_accuracy": summed.eval_accuracy}  # fmt: skip
            try:
                self._journal.sum_unmasked(current.number, sorted(secure.survivors), summed.total_weight)
            except GenflError as exc:  # the round's figures; its model is kept with the checkpoint (retried)
                log.error("round %d: could not record the secure sum's figures: %s", current.number, exc)
            for device_id in sorted(secure.survivors):
                if device_id in self.devices:
                    self.devices[device_id].rounds += 1
                self._ack(device_id, current.number, True)
                if self._hooks.on_update_accepted is not None:
                    self._hooks.on_update_accepted(device_id)
        else:
            reason = f"secure aggregation failed: {secure.failure}"[:160]
            for device_id in sorted(secure.sent_masked):
                self._ack(device_id, current.number, False, "secure aggregation failed")
            for device_id in sorted(set(current.configs) - current.failed):
                current.failed.add(device_id)
                current.reasons[device_id] = reason
                self._journal.failure_recorded(current.number, device_id, reason)
        self._last_secure = (current.number, secure.survivors)
        missing = set(current.configs) - current.answered
        self._close_round(current, timed_out=bool(missing))

    def _publish_tasks(self, current: OpenRound, device_ids: list[str]) -> None:
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

    def _note_failures(self, current: OpenRound, accepted: int, failures: dict[str, int]) -> None:
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

    def _aggregate(self, current: OpenRound) -> dict[str, Any]:
        """The new global model from the round's updates (only with enough of them, and only if it is finite),
        and the round's metrics: the plan's, the evaluation's and the aggregation's."""
        results = current.results()
        metrics = {**current.plan_metrics, **self.strategy.aggregate_evaluate(results)}
        accepted = len(current.accepted)
        if accepted < self.config.min_devices:
            log.warning("round %d: %d updates < min devices %d; model unchanged", current.number, accepted,
                        self.config.min_devices)  # fmt: skip
            # (a secure round's sum was unmasked all the same: the server has seen it)
            return {**metrics, **(self._spend_privacy(current) if current.secure_accepted else {})}
        self.privacy.add_server_noise(current.updates, self.global_state)
        metrics.update(self._spend_privacy(current))
        new_state, fit_metrics = self.strategy.aggregate_fit(self.global_state, results)
        if all(np.isfinite(value).all() for value in new_state.values() if value.dtype.kind == "f"):
            self._set_global(new_state)
        else:  # never send devices a model they cannot train from
            log.error("round %d: the new global model is not finite; keeping the previous one", current.number)
        return {**metrics, **fit_metrics}

    def _spend_privacy(self, current: OpenRound) -> dict[str, Any]:
        """A released sum's privacy figures (its noise shares those of the survivors, under secure aggregation)."""
        survivors = None if current.secure is None else len(current.secure.survivors)
        return self.privacy.spend(current.sampling_rate, survivors)

    def _label_counts(self, device_id: str) -> tuple[float, ...] | None:
        record = self.devices.get(device_id)
        return None if record is None else record.label_counts

    def _round_result(self, current: OpenRound, failures: dict[str, int], metrics: dict[str, Any]) -> RoundResult:
        evaluation = self._evaluator(self.global_state) if self._evaluator else None
        device_accuracy = metrics.pop("device_accuracy", None)
        metrics.pop("teacher_accuracy", None)
        return RoundResult(
            round=current.number,
            selected=len(current.configs),
            devices=len(current.accepted),
            accuracy=None if evaluation is None else evaluation[1],
            loss=None if evaluation is None else evaluation[0],
            train_loss=current.results().mean_of("train_loss") or 0.0,
            seconds=self._clock() - current.started,
            bytes_up=self.transport.bytes_received - current.bytes_up_at_start,
            bytes_down=self.transport.bytes_sent - current.bytes_down_at_start,
            device_accuracy=device_accuracy,
            metrics=metrics,
            failures=failures,
        )

    def _close_round(self, current: OpenRound, *, timed_out: bool) -> None:
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
        closed = ClosedRound(
            self._global_blob,
            self.global_id,
            timed_out=timed_out,
            accuracy=result.accuracy,
            loss=result.loss,
            train_loss=result.train_loss,
            report=result.metrics or None,
            bytes_up=result.bytes_up,
            bytes_down=result.bytes_down,
        )
        self._open = None  # aggregated: updates that come now are for a closed round
        self._closing = (result, closed, -math.inf)
        self._keep_closing_round()

    def _keep_closing_round(self) -> None:
        """Write the aggregated round to the journal (its checkpoint first); a write that fails (a full disk, no
        file descriptors left) is reported and tried again every CHECKPOINT_RETRY_S, never fatal. The next
        round opens only once this one is kept."""
        assert self._closing is not None
        result, closed, tried_at = self._closing
        now = self._clock()
        if now - tried_at < CHECKPOINT_RETRY_S:
            return
        try:
            self._journal.round_closed(result.round, closed)
        except GenflError as exc:
            self._closing = (result, closed, now)
            self.checkpoint_failures += 1
            log.error("round %d: %s; trying again in %.0f s", result.round, exc, CHECKPOINT_RETRY_S)
            return
        self._closing = None
        self._round_kept(result)

    def _round_kept(self, result: RoundResult) -> None:
        self.results.append(result)
        epsilon = result.metrics.get("dp_epsilon")
        log.info(
            "round %d closed: %d/%d updates, accuracy %s%s",
            result.round,
            result.devices,
            result.selected,
            "-" if result.accuracy is None else f"{result.accuracy:.4f}",
            "" if epsilon is None else f", privacy spent: epsilon {epsilon:.3g}",
        )
        if self._hooks.on_round_closed is not None:
            self._hooks.on_round_closed(result)
        self.tick()

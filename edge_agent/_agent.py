"""The agent's protocol logic, independent of the transport. Imports no torch.

It reacts to messages on the device's own topics:

* ``task``       -> fetch the global model blob (and the task's synthetic batch, if
                    it names one) when missing, then start training;
                    a repeated task for the current round re-sends a kept update
                    or asks again for missing chunks
* ``blob/chunk`` -> verify and store a chunk; when the blob is whole, train
* ``ack``        -> the server has the update (or refused it): forget the kept copy

Under secure aggregation the task topic also brings the round's roster, the neighbours' shares and the
request to unmask (:class:`SecureUpdate` answers them), and the update goes out masked.

A finished update is kept (on disk when ``pending_path`` is set) until the
server acknowledges it, and re-sent when the agent starts again. Training is
behind :class:`TrainingRunner`: in-process in a simulation, a worker process
in the daemon.
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from protocol import (
    MIN_CHUNK_SIZE,
    Ack,
    BlobAssembler,
    BlobChunk,
    BlobRequest,
    BlobStore,
    DataError,
    DeviceState,
    Failure,
    FrameGuard,
    MaskedUpdate,
    OpenGuard,
    Progress,
    ProtocolError,
    Release,
    SecAggForward,
    SecAggKeys,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    Task,
    Topics,
    Transport,
    UnmaskRequest,
    Update,
    atomic_write,
    chunk_count,
    decode_message,
    describe_classes,
    encode_message,
)

from ._policy import TaskPolicy
from ._release_taker import ReleaseTaker
from ._secure_update import SecureUpdate

__all__ = ["AgentCore", "TrainingDone", "TrainingRunner"]

log = logging.getLogger("genfl.edge")

TrainingDone = Callable[[Task, "Update | str"], None]


# A repeated task does not ask again for chunks while they are still arriving (seconds since the last one).
DOWNLOAD_PROGRESS_S = 10.0
WILL_ANSWER_S = 10.0  # our own will seen while we are here, or a task of a passed round, is answered at most this often


class TrainingRunner(Protocol):
    def start(self, task: Task, model_blob: bytes, done: TrainingDone, synthetic_blob: bytes | None = None) -> None:
        """Train on ``task`` (mixing in ``synthetic_blob`` if the task has one); call
        ``done(task, update)`` or ``done(task, reason)`` when finished."""


def _read_round(path: Path | None) -> int | None:
    """The round number kept in ``path`` (None: no file, or one that does not hold a round number)."""
    if path is None:
        return None
    try:
        number = int(path.read_text()[:20].strip())
    except (OSError, ValueError):
        return None
    return number if 1 <= number <= 2**31 else None


@dataclass
class _OwnState:
    """What this run of the agent says of itself. Its will is the "offline" state the broker publishes for it
    if it vanishes; on a cluster that can arrive after the "online" it sent on reconnecting (two nodes, no order
    between them): seen while it is here, it is answered with "online" again (at most once per WILL_ANSWER_S),
    or the server would wait for a device it believes gone. Its states are numbered in ``session`` (its will,
    made first, is 0), so that the server tells a replay apart."""

    will_payload: bytes | None
    session: str
    sequence: int = 0
    will_answered_at: float = float("-inf")  # monotonic time the will was last answered
    will_answer_due: bool = False  # a will came too soon after the last answer: answer when the time comes

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence


class AgentCore:
    def __init__(
        self,
        device_id: str,
        topics: Topics,
        transport: Transport,
        store: BlobStore,
        runner: TrainingRunner,
        *,
        num_samples: int,
        label_counts: tuple[float, ...] | None = None,
        classes: tuple[str, ...] | None = None,
        recount: Callable[[tuple[str, ...]], tuple[float, ...] | None] | None = None,
        pending_path: Path | None = None,
        round_path: Path | None = None,
        guard: FrameGuard | None = None,
        policy: TaskPolicy | None = None,
        will_payload: bytes | None = None,
        session: str | None = None,
        releases: ReleaseTaker | None = None,
    ) -> None:
        self.device_id = device_id
        # The latest round whose update from this board the server counted (its ack), kept on disk: a server
        # started from an older copy of its state learns from the board's state message that the fleet is past
        # it. Only an ack moves it: a task, even a forged or replayed one, does not.
        self._round_path = round_path
        self.last_round = _read_round(round_path)
        self._own = _OwnState(will_payload, session or secrets.token_hex(8))
        self._stale_answered: collections.deque[int] = collections.deque(maxlen=16)  # rounds refused as passed
        self._stale_answered_at = float("-inf")  # monotonic time of the last such refusal: one per WILL_ANSWER_S
        # leaving (an offline said); monotonic times of our last state message and of the last chunk that arrived
        self._leaving, self._state_sent_at, self._chunk_at = False, float("-inf"), float("-inf")
        self.guard = guard or OpenGuard()  # signs what we send, checks the server signed what we get
        self.topics, self.transport, self.store, self.runner = topics, transport, store, runner
        self.num_samples = num_samples
        # The label counts this device shares are in the order of the fleet's class list ``classes`` (None: not
        # known yet, so none are shared). A task naming another list makes ``recount`` give them in its order
        # (or raise DataError for a class the fleet does not know), and the device announces them again.
        self.classes = classes
        self.label_counts = label_counts if classes is not None else None
        self._recount = recount
        self.rejected: Counter[str] = Counter()
        self.current_task: Task | None = None
        self.training = False
        self.pending: bytes | None = None  # the encoded update, until acknowledged
        self.pending_round: int | None = None
        self.last_outcome: tuple[int, str] | None = None  # (round, "accepted" / "rejected: ..." / "failed: ...")
        self._pending_sent_at = 0.0
        self._pending_path = pending_path
        self._assembler: BlobAssembler | None = None
        self.accepting_tasks = True
        self.policy = policy  # what this device agrees to train; None: anything the server asks
        self._refused: Failure | None = None  # the refusal of the current task, sent again if it is repeated
        self._training_since = self._progress_at = self._progress_logged = 0.0  # the running job, for progress
        self._older_model: str | None = None  # the model before the current task's, kept one round more
        self._secure: SecureUpdate | None = None  # the current round's secure aggregation, if it has one
        self.releases = releases  # the model releases this board deploys (None: it takes none)
        transport.set_handler(self.on_message)
        transport.set_reconnect_handler(self._on_reconnect)

    def start(self) -> None:
        for channel in ("task", "ack", "blob/chunk"):
            self.transport.subscribe(self.topics.device(self.device_id, channel))  # type: ignore[arg-type]
        if self._own.will_payload is not None:
            self.transport.subscribe(self.topics.device(self.device_id, "state"))
        self.publish_state("online")
        self._load_pending()

    def _on_reconnect(self) -> None:
        """After an outage: say we are here again (a restarted broker may have lost the retained state)
        and re-send a kept update; the server acks it if its round is open, refuses it if not."""
        self.publish_state("online")
        if self.pending is not None:
            log.info(
                "device %s: back online; re-sending the kept update of round %s", self.device_id, self.pending_round
            )
            self.transport.publish(self.topics.device(self.device_id, "update"), self.guard.seal(self.pending))

    def refresh_state(self, now: float, every_s: float) -> None:
        """Say "online" again every ``every_s`` seconds: a state message a broker lost (a cluster losing a
        node) would otherwise leave the server thinking this device is gone until it reconnects."""
        if self._leaving:
            return
        if self._own.will_answer_due and now - self._own.will_answered_at >= WILL_ANSWER_S:
            self._answer_will(now)
        elif every_s > 0 and now - self._state_sent_at >= every_s:
            self.publish_state("online")

    def publish_state(self, state: str) -> None:
        self._leaving = state == "offline"
        self._state_sent_at = time.monotonic()
        message = DeviceState(
            device_id=self.device_id,
            state=state,  # type: ignore[arg-type]
            num_samples=self.num_samples,
            label_counts=self.label_counts,
            last_round=self.last_round,
            session=self._own.session,
            sequence=self._own.next_sequence(),
            release=None if self.releases is None else self.releases.running,
            release_score=None if self.releases is None else self.releases.running_score,
        )
        self.transport.publish(
            self.topics.device(self.device_id, "state"), self.guard.seal(encode_message(message)), retain=True
        )

    def on_message(self, topic: str, payload: bytes) -> None:
        """Handle one message; a bad one is logged and counted, never raised."""
        try:
            parsed = self.topics.parse(topic)
            if parsed.device_id != self.device_id:
                raise ProtocolError("foreign-topic", topic)
            if parsed.channel == "state":  # our own state, as the broker has it (our will, our own publishes)
                self._on_own_state(payload)
                return
            frame = self.guard.open("server", payload)
            if parsed.channel == "task":
                message: Task | SecAggRoster | SecAggForward | UnmaskRequest | Release = decode_message(
                    frame, (Task, SecAggRoster, SecAggForward, UnmaskRequest, Release)
                )
                if isinstance(message, Task):
                    self._on_task(message)
                elif isinstance(message, Release):
                    self._on_release(message)
                else:
                    self._on_secure_frame(message)
            elif parsed.channel == "blob/chunk":
                self._on_chunk(decode_message(frame, BlobChunk))
            elif parsed.channel == "ack":
                self._on_ack(decode_message(frame, Ack))
            else:
                raise ProtocolError("unexpected-channel", parsed.channel)
        except ProtocolError as exc:
            self.rejected[exc.reason] += 1
            log.warning("device %s rejected a message on %s: %s", self.device_id, topic[:120], exc)
        except Exception:  # a bug or an input nobody foresaw: drop this message, keep the agent running
            self.rejected["internal-error"] += 1
            log.exception("device %s dropped a message on %s after an unexpected error", self.device_id, topic[:120])

    def _on_own_state(self, payload: bytes) -> None:
        if payload != self._own.will_payload or self._leaving:
            return  # what we published ourselves (MQTT 3.1.1 has no "no local"), or a cleared state
        # The last word on the topic must be ours. An answer is not the will, so answers cannot answer each
        # other; and a will replayed again and again gets one answer per WILL_ANSWER_S (the periodic state
        # refresh says "online" in any case).
        now = time.monotonic()
        if now - self._own.will_answered_at < WILL_ANSWER_S:
            self._own.will_answer_due = True  # answered once the interval is over (refresh_state)
            raise ProtocolError("will-flood", f"our will again within {WILL_ANSWER_S:.0f} s; answering later")
        self._answer_will(now)

    def _answer_will(self, now: float) -> None:
        self._own.will_answered_at, self._own.will_answer_due = now, False
        log.info("device %s: the broker says we are offline, but we are here: saying so again", self.device_id)
        self.publish_state("online")

    # -- pending update ------------------------------------------------------------------------

    def _send_pending(self, now: float) -> None:
        assert self.pending is not None
        self._pending_sent_at = now
        # Ed25519 signatures are deterministic: every re-send is byte-identical, which the server's
        # replay check relies on.
        self.transport.publish(self.topics.device(self.device_id, "update"), self.guard.seal(self.pending))

    def resend_pending(self, now: float, every_s: float) -> None:
        """At-least-once on top of QoS 1: re-send a kept update nobody acknowledged for ``every_s``
        (the server may have failed to store it, say with a full disk)."""
        if self.pending is not None and now - self._pending_sent_at >= every_s:
            log.info("device %s: no ack for round %s yet; sending the update again", self.device_id, self.pending_round)
            self._send_pending(now)

    def report_progress(self, now: float, every_s: float) -> None:
        """While a job runs, tell the server every ``every_s`` seconds (it then does not re-send the task of a
        long round), and log how long it has run once a minute."""
        task = self.current_task
        if not self.training or task is None or every_s <= 0 or now - self._progress_at < every_s:
            return
        self._progress_at = now
        seconds = max(0.0, now - self._training_since)
        progress = Progress(round=task.round, device_id=self.device_id, seconds=round(seconds, 1))
        self.transport.publish(self.topics.device(self.device_id, "update"), self.guard.seal(encode_message(progress)))
        if seconds - self._progress_logged >= 60.0:
            self._progress_logged = seconds
            log.info("device %s: training round %d, %.0f s so far", self.device_id, task.round, seconds)

    def _keep(self, round_number: int, frame: bytes) -> None:
        self.pending, self.pending_round = frame, round_number
        if self._pending_path is not None:
            atomic_write(self._pending_path, frame)  # survives a power cut right after the send

    def _forget(self) -> None:
        self.pending, self.pending_round = None, None
        if self._pending_path is not None:
            self._pending_path.unlink(missing_ok=True)

    def _load_pending(self) -> None:
        if self._pending_path is None or not self._pending_path.is_file():
            return
        frame = self._pending_path.read_bytes()
        try:
            update = decode_message(frame, Update)
        except ProtocolError as exc:
            log.error("device %s: dropping an unreadable kept update (%s)", self.device_id, exc)
            self._forget()
            return
        self.pending, self.pending_round = frame, update.round
        log.info("device %s: re-sending the kept update of round %d", self.device_id, update.round)
        self._send_pending(time.monotonic())

    # -- handlers ------------------------------------------------------------------------------

    def _on_task(self, task: Task) -> None:
        if task.device_id != self.device_id:
            raise ProtocolError("wrong-device", f"task for {task.device_id}")
        current = self.current_task
        # the first round this board may still take: the one it is on, or (after a restart) the one after the
        # last it was counted in
        passed = current.round if current is not None else (self.last_round or 0) + 1
        if task.round < passed:
            self._refuse_passed_round(task.round, passed)
            return
        if current is not None and task.round == current.round:
            self._on_repeated_task(task)
            return
        if not self.accepting_tasks:
            log.info("device %s: stopping; not taking the task of round %d", self.device_id, task.round)
            return
        if current is not None and current.synthetic_id is not None and current.synthetic_id != task.synthetic_id:
            self.store.discard(current.synthetic_id)  # last round's synthetic batch is spent
        if current is not None and current.model_id != task.model_id:
            # Keep the new round's model and the last one (what `genfl-edge export` may still name); older go.
            if self._older_model is not None and self._older_model not in (task.model_id, current.model_id):
                self.store.discard(self._older_model)
            self._older_model = current.model_id
        self.current_task = task
        self._refused = None
        refusal = self._adopt_classes(task.classes)
        if refusal is None and self.policy is not None:
            policy_refusal = self.policy.refusal(task.config, self.num_samples)
            refusal = None if policy_refusal is None else f"policy: {policy_refusal}"
        if refusal is not None:
            log.error("device %s: refusing the task of round %d: %s", self.device_id, task.round, refusal)
            self.last_outcome = (task.round, f"refused: {refusal.removeprefix('policy: ')}")
            self._refused = Failure(round=task.round, device_id=self.device_id, reason=refusal)
            self._send_failure(self._refused)
            return
        log.info("device %s: task for round %d (model %s)", self.device_id, task.round, task.model_id[:12])
        self._secure = None
        if task.config.secure_aggregation:
            self._secure = SecureUpdate(self.device_id, self.topics.fleet, task, self.num_samples)
            self._send(self._secure.keys)
        self._fetch_or_train(task)

    def _refuse_passed_round(self, round_number: int, passed: int) -> None:
        """A task for a round this board is past (a server behind the fleet, a replay): say so once per round,
        so that the server stops waiting for it, and a flood of old tasks costs one answer each at most."""
        reason = f"stale-task: round {round_number}, this board is on round {passed}"
        now = time.monotonic()
        if round_number in self._stale_answered or now - self._stale_answered_at < WILL_ANSWER_S:
            # answered already, or another passed round within the interval (replays of many old rounds)
            raise ProtocolError("stale-task", f"round {round_number}: passed, not answered again so soon")
        self._stale_answered.append(round_number)
        self._stale_answered_at = now
        log.warning("device %s: refusing the task of round %d: this board is on round %d", self.device_id,
                    round_number, passed)  # fmt: skip
        self._send_failure(Failure(round=round_number, device_id=self.device_id, reason=reason))

    def _note_round(self, number: int) -> None:
        """Remember (on disk too) that this board's update of round ``number`` counted, and say so in its state
        (retained: a server started from an older copy of its state learns from it that the fleet is past it)."""
        self.last_round = number
        if self._round_path is not None:
            try:
                atomic_write(self._round_path, str(number).encode())
            except OSError as exc:  # a cache of what the state message says: training goes on
                log.warning("cannot keep the latest round in %s: %s", self._round_path, exc)
        self.publish_state("online")

    def _adopt_classes(self, classes: tuple[str, ...]) -> str | None:
        """Take the fleet's class list of a task: the label counts in its order, announced again if they
        changed. Why this device cannot train for this fleet (a class the fleet does not know), or None."""
        if classes == self.classes:
            return None
        counts = None
        if self._recount is not None:
            try:
                counts = self._recount(classes)
            except DataError as exc:
                return f"data: {exc}"
        log.info("device %s: the fleet's classes are %s", self.device_id, describe_classes(classes))
        self.classes, self.label_counts = classes, counts
        self.publish_state("online")
        return None

    @staticmethod
    def _blobs_of(task: Task) -> list[str]:
        return [task.model_id] + ([task.synthetic_id] if task.synthetic_id is not None else [])

    def _fetch_or_train(self, task: Task) -> None:
        """Ask for the first blob of the task we lack (one download at a time), or train if all are here."""
        for ident in self._blobs_of(task):
            if not self.store.has(ident):
                self._request_blob(ident, ())
                return
        self._train(task)

    def _on_repeated_task(self, task: Task) -> None:
        """The server asked again (it restarted, or a message was lost): resume where we are."""
        if self._refused is not None:
            self._send_failure(self._refused)
            return
        secure = self._secure
        if secure is not None and secure.round == task.round and not secure.has_roster:
            self._send(secure.keys)  # our keys may be what was lost
        if self.pending is not None and self.pending_round == task.round:
            self._send_pending(time.monotonic())
        elif not self.training and time.monotonic() - self._chunk_at >= DOWNLOAD_PROGRESS_S:
            # (a download that is moving is left alone: asking again would send chunks on their way twice)
            for ident in self._blobs_of(task):
                if not self.store.has(ident):
                    assembler = self._assembler
                    missing = assembler.missing() if assembler is not None and assembler.blob_id == ident else ()
                    self._request_blob(ident, missing)
                    return
            if self.last_outcome is None or self.last_outcome[0] != task.round:
                self._train(task)  # everything is here, yet no job ran: start it now

    def _request_blob(self, blob_id: str, chunks: tuple[int, ...]) -> None:
        request = BlobRequest(blob_id=blob_id, chunks=chunks)
        self.transport.publish(self.topics.device(self.device_id, "blob/req"), self.guard.seal(encode_message(request)))

    def _on_release(self, release: Release) -> None:
        taker = self.releases
        if taker is None:
            return  # a simulated board runs no model
        running = taker.running
        request = taker.on_release(release, self.classes)
        if request is not None:
            self.transport.publish(self.topics.device(self.device_id, "blob/req"),
                                   self.guard.seal(encode_message(request)))  # fmt: skip
        if taker.running != running:
            self.publish_state("online")  # the server (and `devices list`) learn what the board runs now

    def take_deferred_release(self) -> None:
        """A release heard outside the train window: take it now that the window is open."""
        release = None if self.releases is None else self.releases.due()
        if release is not None:
            self._on_release(release)

    def _on_chunk(self, chunk: BlobChunk) -> None:
        taker = self.releases
        if taker is not None and taker.wants(chunk.blob_id):
            running = taker.running
            taker.on_chunk(chunk)
            if taker.running != running:
                self.publish_state("online")
            return
        self._chunk_at = time.monotonic()
        task = self.current_task
        if task is None or chunk.blob_id not in self._blobs_of(task):
            raise ProtocolError("unwanted-chunk", chunk.blob_id[:12])
        if self.store.has(chunk.blob_id) or self.training:
            return  # a duplicate after completion
        sizes = {task.model_id: task.model_size}
        if task.synthetic_id is not None:
            sizes[task.synthetic_id] = task.synthetic_size
        announced = sizes[chunk.blob_id]
        # Checked before anything is allocated: the size the task announced, and no more chunks than
        # the smallest chunk size the server may use allows (a hostile count would make us track 2**31 parts).
        if chunk.total_size != announced:
            raise ProtocolError(
                "bad-chunk", f"blob {chunk.blob_id[:12]} of {chunk.total_size} B, the task said {announced}"
            )
        if chunk.count > chunk_count(announced, MIN_CHUNK_SIZE) or len(chunk.data) > announced:
            raise ProtocolError("bad-chunk", f"{chunk.count} chunks for a blob of {announced} B")
        if self._assembler is None or self._assembler.blob_id != chunk.blob_id:
            self._assembler = BlobAssembler(self.store, chunk.blob_id, chunk.count, chunk.total_size)
        if self._assembler.add(chunk):
            self._assembler = None
            self._fetch_or_train(task)

    def _train(self, task: Task) -> None:
        """Start the round's training job, the task's blobs read (and checked) first: one found corrupt on disk
        is removed and fetched again; a job that cannot start is this round's failure, reported."""
        try:
            model = self.store.get(task.model_id)
            synthetic = self.store.get(task.synthetic_id) if task.synthetic_id is not None else None
        except (KeyError, OSError) as exc:
            lost = [ident for ident in self._blobs_of(task) if not self.store.has(ident)]
            if not lost:  # unreadable yet still there (a permission, an I/O error): nothing to fetch
                self._fail(task, f"cannot read the round's blobs: {exc}")
                return
            log.warning("device %s: %s; fetching blob %s again", self.device_id, exc, lost[0][:12])
            self._request_blob(lost[0], ())
            return
        self.training = True
        self._training_since = self._progress_at = time.monotonic()  # (a job done within every_s says nothing)
        self._progress_logged = 0.0
        try:
            self.runner.start(task, model, self._on_trained, synthetic)
        except Exception as exc:  # (OSError writing the job, a worker that cannot start): no job runs
            self.training = False
            self._fail(task, f"the training job did not start: {type(exc).__name__}: {exc}")

    def _fail(self, task: Task, reason: str) -> None:
        log.error("device %s: training for round %d failed: %s", self.device_id, task.round, reason)
        self.last_outcome = (task.round, f"failed: {reason[:200]}")
        self._send_failure(Failure(round=task.round, device_id=self.device_id, reason=reason[:2000]))

    def _on_trained(self, task: Task, outcome: Update | str) -> None:
        self.training = False
        if isinstance(outcome, str):
            self._fail(task, outcome)
            return
        secure = self._secure
        if task.config.secure_aggregation and (secure is None or secure.round != task.round):
            # the round's exchange failed here (it said so): an update of a secure round never goes out in the clear
            log.warning("device %s: round %d's secure aggregation is over for us; the update is not sent",
                        self.device_id, task.round)  # fmt: skip
            return
        if secure is not None and secure.round == task.round:
            try:
                masked = secure.on_trained(outcome, self.store.get(task.model_id))
            except (ProtocolError, KeyError, OSError) as exc:
                self._fail(task, f"cannot mask the update: {exc}")
                return
            log.info("device %s: trained round %d in %.0f s; %s", self.device_id, task.round,
                     time.monotonic() - self._training_since,
                     "sending it masked" if masked else "masking it once the neighbours' shares came")  # fmt: skip
            if masked is not None:
                self._keep_masked(masked)
            return
        # The weight it asks for is the count it announced (noised, if this device noises it).
        self._keep(task.round, encode_message(replace(outcome, num_samples=self.num_samples)))
        assert self.pending is not None
        log.info("device %s: trained round %d in %.0f s; sending the update (%d KB)", self.device_id, task.round,
                 time.monotonic() - self._training_since, len(self.pending) // 1024)  # fmt: skip
        self._send_pending(time.monotonic())

    # -- secure aggregation --------------------------------------------------------------------

    def _on_secure_frame(self, frame: SecAggRoster | SecAggForward | UnmaskRequest) -> None:
        secure = self._secure
        if secure is None or self.current_task is None or frame.round != secure.round:
            raise ProtocolError("secagg-round", f"a {frame.TYPE} of round {frame.round}, not ours")
        try:
            if isinstance(frame, SecAggRoster):
                self._send(secure.on_roster(frame))
            elif isinstance(frame, SecAggForward):
                masked = secure.on_forward(frame)
                if masked is not None:
                    self._keep_masked(masked)
            else:
                self._send(secure.on_unmask(frame))
        except ProtocolError as exc:
            if exc.reason == "secagg-round":
                raise  # not for this round: counted, and the round goes on
            # a step cannot be taken twice: this board is out of the round, and says so (the server need not wait)
            self._fail(self.current_task, f"secure aggregation: {exc}")
            self._secure = None

    def _keep_masked(self, masked: MaskedUpdate) -> None:
        """The masked update is sent like a plain one (re-sent until acknowledged, after the unmasking), but kept
        in memory only: after a restart its secrets are gone, and the round recovers it from the neighbours."""
        self.pending, self.pending_round = encode_message(masked), masked.round
        self._send_pending(time.monotonic())

    def _send(self, message: SecAggKeys | SecAggShares | SecAggUnmask) -> None:
        self.transport.publish(self.topics.device(self.device_id, "update"), self.guard.seal(encode_message(message)))

    def _send_failure(self, failure: Failure) -> None:
        self.transport.publish(self.topics.device(self.device_id, "update"), self.guard.seal(encode_message(failure)))

    def _on_ack(self, ack: Ack) -> None:
        if self.pending is None or ack.round != self.pending_round:
            raise ProtocolError("unexpected-ack", f"round {ack.round}")
        if ack.accepted:
            log.info("device %s: the server accepted the update of round %d", self.device_id, ack.round)
            self.last_outcome = (ack.round, "accepted")
            if self.last_round is None or ack.round > self.last_round:
                self._note_round(ack.round)
        else:
            log.warning("device %s: server refused the round %d update: %s", self.device_id, ack.round, ack.reason)
            self.last_outcome = (ack.round, f"rejected: {ack.reason}")
        self._forget()

"""The agent's protocol logic, independent of the transport. Imports no torch.

It reacts to messages on the device's own topics:

* ``task``       -> fetch the global model blob if missing, then start training
* ``blob/chunk`` -> verify and store a chunk; when the blob is whole, train
* ``ack``        -> the server has the update: forget the pending copy

Training itself is behind :class:`TrainingRunner` so that a simulation can
train in-process while the daemon starts a worker process.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from protocol import (
    Ack,
    BlobAssembler,
    BlobChunk,
    BlobRequest,
    BlobStore,
    DeviceState,
    ProtocolError,
    Task,
    Topics,
    Transport,
    Update,
    decode_message,
    encode_message,
)

__all__ = ["AgentCore", "TrainingDone", "TrainingRunner"]

log = logging.getLogger("genfl.edge")

TrainingDone = Callable[[Task, "Update | str"], None]


class TrainingRunner(Protocol):
    def start(self, task: Task, model_blob: bytes, done: TrainingDone) -> None:
        """Train on ``task``; call ``done(task, update)`` or ``done(task, reason)`` when finished."""


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
    ) -> None:
        self.device_id = device_id
        self.topics = topics
        self.transport = transport
        self.store = store
        self.runner = runner
        self.num_samples = num_samples
        self.label_counts = label_counts
        self.rejected: Counter[str] = Counter()
        self.current_task: Task | None = None
        self.pending: Update | None = None
        self.rounds_done: list[int] = []
        self._assembler: BlobAssembler | None = None
        transport.set_handler(self.on_message)

    def start(self) -> None:
        for channel in ("task", "ack", "blob/chunk"):
            self.transport.subscribe(self.topics.device(self.device_id, channel))  # type: ignore[arg-type]
        self.publish_state("online")

    def publish_state(self, state: str) -> None:
        message = DeviceState(
            device_id=self.device_id,
            state=state,  # type: ignore[arg-type]
            num_samples=self.num_samples,
            label_counts=self.label_counts,
        )
        self.transport.publish(self.topics.device(self.device_id, "state"), encode_message(message), retain=True)

    def on_message(self, topic: str, payload: bytes) -> None:
        """Handle one message; a bad one is logged and counted, never raised."""
        try:
            parsed = self.topics.parse(topic)
            if parsed.device_id != self.device_id:
                raise ProtocolError("foreign-topic", topic)
            if parsed.channel == "task":
                self._on_task(decode_message(payload, Task))
            elif parsed.channel == "blob/chunk":
                self._on_chunk(decode_message(payload, BlobChunk))
            elif parsed.channel == "ack":
                self._on_ack(decode_message(payload, Ack))
            else:
                raise ProtocolError("unexpected-channel", parsed.channel)
        except ProtocolError as exc:
            self.rejected[exc.reason] += 1
            log.warning("device %s rejected a message on %s: %s", self.device_id, topic[:120], exc)

    def _on_task(self, task: Task) -> None:
        if task.device_id != self.device_id:
            raise ProtocolError("wrong-device", f"task for {task.device_id}")
        if self.current_task is not None and task.round <= self.current_task.round:
            raise ProtocolError("stale-task", f"round {task.round}, already on {self.current_task.round}")
        self.current_task = task
        log.info("device %s: task for round %d (model %s)", self.device_id, task.round, task.model_id[:12])
        if self.store.has(task.model_id):
            self._train(task)
            return
        assembler = self._assembler
        resuming = assembler is not None and assembler.blob_id == task.model_id
        self._request_blob(task.model_id, assembler.missing() if assembler is not None and resuming else ())

    def _request_blob(self, blob_id: str, chunks: tuple[int, ...]) -> None:
        request = BlobRequest(blob_id=blob_id, chunks=chunks)
        self.transport.publish(self.topics.device(self.device_id, "blob/req"), encode_message(request))

    def _on_chunk(self, chunk: BlobChunk) -> None:
        task = self.current_task
        if task is None or chunk.blob_id != task.model_id:
            raise ProtocolError("unwanted-chunk", chunk.blob_id[:12])
        if self.store.has(chunk.blob_id):
            return  # a duplicate after completion
        if self._assembler is None or self._assembler.blob_id != chunk.blob_id:
            self._assembler = BlobAssembler(self.store, chunk.blob_id, chunk.count, chunk.total_size)
        if self._assembler.add(chunk):
            self._assembler = None
            self._train(task)

    def _train(self, task: Task) -> None:
        self.runner.start(task, self.store.get(task.model_id), self._on_trained)

    def _on_trained(self, task: Task, outcome: Update | str) -> None:
        if isinstance(outcome, str):
            log.error("device %s: training for round %d failed: %s", self.device_id, task.round, outcome)
            return
        self.pending = outcome
        self.transport.publish(self.topics.device(self.device_id, "update"), encode_message(outcome))

    def _on_ack(self, ack: Ack) -> None:
        if self.pending is None or ack.round != self.pending.round:
            raise ProtocolError("unexpected-ack", f"round {ack.round}")
        if not ack.accepted:
            log.warning("device %s: server rejected round %d update: %s", self.device_id, ack.round, ack.reason)
        self.rounds_done.append(ack.round)
        self.pending = None

"""The coordinator's round logic, independent of the transport.

It keeps a registry of devices from their ``state`` messages, opens a round
when enough are online, publishes one task per picked device, serves model
blobs chunk by chunk, validates and accumulates updates as they arrive, and
closes the round when every picked device answered or the deadline passed
(with at least ``min_devices`` updates). Time comes from an injected clock,
so tests and simulations drive it without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import (
    DEFAULT_CHUNK_SIZE,
    Ack,
    BlobRequest,
    BlobStore,
    ConfigError,
    DeviceState,
    ProtocolError,
    Task,
    TensorDict,
    Topics,
    TrainConfig,
    Transport,
    Update,
    decode_message,
    encode_message,
    encode_tensors,
    iter_chunks,
)

from ._aggregation import WeightedDeltaSum
from ._strategy import Strategy

__all__ = ["Coordinator", "CoordinatorConfig", "DeviceRecord", "RoundResult"]

log = logging.getLogger("genfl.server")

Evaluator = Callable[[TensorDict], "tuple[float, float] | None"]


@dataclass(frozen=True)
class CoordinatorConfig:
    fleet: str
    model_name: str
    rounds: int
    min_devices: int = 1
    round_timeout_s: float = 600.0
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if self.min_devices < 1:
            raise ConfigError(f"min devices must be at least 1, got {self.min_devices}")
        if self.round_timeout_s <= 0:
            raise ConfigError("round timeout must be positive")
        if not 1024 <= self.chunk_size <= 256 * 1024 * 1024:
            raise ConfigError(f"chunk size must be 1 KiB..256 MiB, got {self.chunk_size}")


@dataclass
class DeviceRecord:
    device_id: str
    online: bool
    num_samples: int
    label_counts: tuple[float, ...] | None
    rounds: int = 0


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


@dataclass
class _OpenRound:
    number: int
    configs: dict[str, TrainConfig]
    updates: WeightedDeltaSum
    started: float
    bytes_up_at_start: int
    bytes_down_at_start: int
    accepted: set[str] = field(default_factory=set)
    train_loss_sum: float = 0.0


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
        clock: Callable[[], float] = time.monotonic,
        store: BlobStore | None = None,
    ) -> None:
        self.config = config
        self.strategy = strategy
        self.transport = transport
        self.topics = Topics(config.fleet)
        self.devices: dict[str, DeviceRecord] = {}
        self.rejected: Counter[str] = Counter()
        self.results: list[RoundResult] = []
        self.global_state = initial_state
        self.round_number = 0
        self._store = store or BlobStore()
        self._evaluator = evaluator
        self._on_round_closed = on_round_closed
        self._on_round_opened = on_round_opened
        self._clock = clock
        self._open: _OpenRound | None = None
        self._global_blob = encode_tensors(initial_state, {"model": config.model_name})
        self.global_id = self._store.put(self._global_blob)
        transport.set_handler(self.on_message)

    @property
    def finished(self) -> bool:
        return self.round_number >= self.config.rounds and self._open is None

    def start(self) -> None:
        for channel in ("state", "update", "blob/req"):
            self.transport.subscribe(self.topics.all_devices(channel))  # type: ignore[arg-type]

    # -- messages -----------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """Handle one message; a bad one is logged and counted, never raised."""
        try:
            parsed = self.topics.parse(topic)
            if parsed.channel == "state":
                self._on_state(parsed.device_id, decode_message(payload, DeviceState))
            elif parsed.channel == "update":
                self._on_update(parsed.device_id, decode_message(payload, Update))
            elif parsed.channel == "blob/req":
                self._on_blob_request(parsed.device_id, decode_message(payload, BlobRequest))
            else:
                raise ProtocolError("unexpected-channel", parsed.channel)
        except ProtocolError as exc:
            self.rejected[exc.reason] += 1
            log.warning("rejected a message on %s: %s", topic[:120], exc)
        self.tick()

    def _on_state(self, device_id: str, state: DeviceState) -> None:
        if state.device_id != device_id:
            raise ProtocolError("wrong-device", f"state for {state.device_id} on {device_id}'s topic")
        record = self.devices.get(device_id)
        if record is None:
            record = self.devices[device_id] = DeviceRecord(device_id, False, 0, None)
            log.info("device %s registered (%d samples)", device_id, state.num_samples)
        record.online = state.state == "online"
        record.num_samples = state.num_samples
        record.label_counts = state.label_counts

    def _on_blob_request(self, device_id: str, request: BlobRequest) -> None:
        if not self._store.has(request.blob_id):
            raise ProtocolError("unknown-blob", request.blob_id[:12])
        data = self._store.get(request.blob_id)
        topic = self.topics.device(device_id, "blob/chunk")
        for chunk in iter_chunks(data, self.config.chunk_size, request.chunks):
            self.transport.publish(topic, encode_message(chunk))

    def _on_update(self, device_id: str, update: Update) -> None:
        current = self._open
        if update.device_id != device_id:
            raise ProtocolError("wrong-device", f"update for {update.device_id} on {device_id}'s topic")
        if current is None or update.round != current.number:
            raise ProtocolError("closed-round", f"update for round {update.round}")
        if device_id not in current.configs:
            raise ProtocolError("not-selected", f"{device_id} was not picked for round {update.round}")
        if device_id in current.accepted:
            self._ack(device_id, update.round, True, "duplicate")  # QoS 1 redelivery: ack again, count once
            return
        if update.base_model_id != self.global_id:
            raise ProtocolError("stale-base", f"update built on {update.base_model_id[:12]}")
        current.updates.add(update.delta, update.num_samples)
        current.accepted.add(device_id)
        current.train_loss_sum += update.train_loss * update.num_samples
        self.devices[device_id].rounds += 1
        self._ack(device_id, update.round, True)

    def _ack(self, device_id: str, round_number: int, accepted: bool, reason: str = "") -> None:
        ack = Ack(round=round_number, device_id=device_id, accepted=accepted, reason=reason)
        self.transport.publish(self.topics.device(device_id, "ack"), encode_message(ack))

    # -- rounds -------------------------------------------------------------------------------

    def online_devices(self) -> list[str]:
        return sorted(d for d, r in self.devices.items() if r.online)

    def tick(self) -> None:
        """Open or close rounds as the registry and the clock say."""
        current = self._open
        if current is not None:
            everyone = current.accepted == set(current.configs)
            late = self._clock() - current.started >= self.config.round_timeout_s
            if everyone or late:
                self._close_round(current, timed_out=not everyone)
            return
        if self.round_number < self.config.rounds and len(self.online_devices()) >= self.config.min_devices:
            self._open_round(self.round_number + 1)

    def _open_round(self, number: int) -> None:
        configs = self.strategy.configure_round(number, self.online_devices())
        self._open = _OpenRound(
            number=number,
            configs=configs,
            updates=WeightedDeltaSum(self.global_state),
            started=self._clock(),
            bytes_up_at_start=self.transport.bytes_received,
            bytes_down_at_start=self.transport.bytes_sent,
        )
        self.round_number = number
        log.info("round %d: %d devices picked", number, len(configs))
        if self._on_round_opened is not None:
            self._on_round_opened(number, len(configs))
        for device_id, train_config in configs.items():
            task = Task(
                round=number,
                device_id=device_id,
                model_name=self.config.model_name,
                model_id=self.global_id,
                model_size=len(self._global_blob),
                config=train_config,
            )
            self.transport.publish(self.topics.device(device_id, "task"), encode_message(task))

    def _close_round(self, current: _OpenRound, *, timed_out: bool) -> None:
        accepted = len(current.accepted)
        if accepted >= self.config.min_devices:
            self.global_state = self.strategy.aggregate_round(self.global_state, current.updates)
            self._global_blob = encode_tensors(self.global_state, {"model": self.config.model_name})
            self.global_id = self._store.put(self._global_blob)
        else:
            log.warning(
                "round %d: %d updates < min devices %d; model unchanged",
                current.number,
                accepted,
                self.config.min_devices,
            )
        if timed_out:
            missing = sorted(set(current.configs) - current.accepted)
            log.warning("round %d timed out; left out: %s", current.number, ", ".join(missing))
        evaluation = self._evaluator(self.global_state) if self._evaluator else None
        result = RoundResult(
            round=current.number,
            selected=len(current.configs),
            devices=accepted,
            accuracy=None if evaluation is None else evaluation[1],
            loss=None if evaluation is None else evaluation[0],
            train_loss=current.train_loss_sum / max(current.updates.total_weight, 1),
            seconds=self._clock() - current.started,
            bytes_up=self.transport.bytes_received - current.bytes_up_at_start,
            bytes_down=self.transport.bytes_sent - current.bytes_down_at_start,
        )
        self._open = None
        self.results.append(result)
        log.info(
            "round %d closed: %d/%d updates, accuracy %s",
            current.number,
            accepted,
            len(current.configs),
            result.accuracy,
        )
        if self._on_round_closed is not None:
            self._on_round_closed(result)
        self.tick()

"""Typed, versioned messages and their wire format.

A frame is ``b"GFL" + version byte + 4-byte big-endian header length +
JSON header + binary body``. The header always has ``"type"``; the body
carries bytes (safetensors tensors, blob chunks) that JSON would bloat.

:func:`decode_message` is the single place where bytes from the network
become typed values; anything else raises :class:`ProtocolError` with a
short reason slug (``bad-frame``, ``bad-field``, ...) for the counters.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, Literal, TypeVar, Union

from ._classes import validate_classes
from ._errors import GenflError, ProtocolError
from ._fields import (
    HEX_DIGITS as _SHA256_HEX,
    bad_field as _fail,
    check_device as _check_device,
    check_float as _check_float,
    check_int as _check_int,
    check_sha256 as _check_sha256,
)
from ._json import loads_bounded
from ._release import Release
from ._secagg_messages import (
    SECAGG_MESSAGES,
    MaskedUpdate,
    SecAggForward,
    SecAggKeys,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    UnmaskRequest,
)
from ._synthetic import MAX_PROBES
from ._tensors import TensorDict, decode_tensors, encode_tensors

__all__ = [
    "AUGMENTATIONS",
    "SYNTHETIC_NORMS",
    "SYNTHETIC_RESTYLES",
    "SyntheticNorm",
    "SyntheticRestyle",
    "PROTOCOL_VERSION",
    "Augmentation",
    "Ack",
    "BlobChunk",
    "BlobRequest",
    "DeviceState",
    "Failure",
    "Progress",
    "PROGRESS_EVERY_S",
    "DEFAULT_ROUND_TIMEOUT_S",
    "Message",
    "Task",
    "TrainConfig",
    "Update",
    "decode_message",
    "encode_message",
]

PROTOCOL_VERSION = 2  # 2: tasks carry the fleet's class list; synthetic norm and restyle modes; probes


class SyntheticNorm(str, Enum):
    """How local training passes synthetic samples through BatchNorm: ``joint``, in one batch with the real ones
    (the mix's statistics), or ``frozen``, in a pass of their own on the running statistics of real data."""

    JOINT = "joint"
    FROZEN = "frozen"


SYNTHETIC_NORMS = tuple(n.value for n in SyntheticNorm)


class SyntheticRestyle(str, Enum):
    """How a device bridges the look of synthetic images and its own: not at all, the synthetic images take its
    colours, half of its own images take theirs (so that colour is no cue to real or synthetic), or ``auto``:
    the latter where the two colour distributions differ (a style gap), else nothing."""

    NONE = "none"
    SYNTHETIC = "synthetic"
    REAL = "real"
    AUTO = "auto"


SYNTHETIC_RESTYLES = tuple(r.value for r in SyntheticRestyle)


class Augmentation(str, Enum):
    """What local training does to each batch: nothing, or random padded crops and horizontal flips."""

    NONE = "none"
    CROP_FLIP = "crop-flip"


AUGMENTATIONS = tuple(a.value for a in Augmentation)
_MAGIC = b"GFL"
_PREFIX = struct.Struct(">3sBI")
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TrainConfig:
    """How a device trains in one round (sent inside each task)."""

    # The defaults of every entry point: the server's StrategyConfig (and through it `simulate`, `serve` and
    # their options) takes its defaults from these.
    local_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    prox_mu: float = 0.0
    seed: int = 0
    codec: str = "fp32"  # how the device encodes its update: fp32, int8 or int4
    qat: bool = True  # train int8 quantization-aware (fake quant); False trains in float
    # GenFL: the weight of the loss on the task's synthetic batch (0 when the task has none), set by the
    # server from how well the previous global model recognises the synthetic images, and how many
    # synthetic samples join each local batch per real sample.
    synthetic_weight: float = 0.0
    synthetic_ratio: float = 0.25
    augment: str = "none"  # none, or crop-flip (random 4-pixel-padded crops and horizontal flips)
    synthetic_norm: str = "joint"  # how synthetic samples meet BatchNorm: joint or frozen
    # Bridging a style gap between the synthetic images and the device's own (computed on the device): none;
    # synthetic (the synthetic images take the device's colours: per-channel mean and spread); real (each round
    # half of the device's images take the synthetic images' colours: mean and colour covariance); auto (real
    # where the two colour distributions are more than models.STYLE_GAP_NATS apart, else none).
    synthetic_restyle: str = "none"
    # Secure aggregation: the device sends its update masked, so that the server learns only the round's sum, and
    # weighs it itself, by the sample count it announced capped at ``weight_cap`` (None: uncapped).
    secure_aggregation: bool = False
    weight_cap: int | None = None
    # Client-level differential privacy (DP-FedAvg): the update clipped to L2 norm ``clip_norm`` on the device,
    # every update weighted the same, Gaussian noise of ``noise_multiplier * clip_norm`` on the round's sum, added
    # by the devices in ``noise_shares`` shares (secure aggregation) or by the server (0). No exact figures are sent.
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    noise_shares: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.qat, bool):
            raise _fail("qat must be a boolean")
        if not isinstance(self.secure_aggregation, bool):
            raise _fail("secure_aggregation must be a boolean")
        if self.weight_cap is not None:
            _check_int("weight_cap", self.weight_cap, 1, 2**40)
        if self.clip_norm is not None:
            _check_float("clip_norm", self.clip_norm, 1e-9, 1e6)
        _check_float("noise_multiplier", self.noise_multiplier, 0.0, 1e4)
        _check_int("noise_shares", self.noise_shares, 0, 100_000)
        if self.clip_norm is None and (self.noise_multiplier > 0 or self.noise_shares > 0):
            raise _fail("noise needs a clip_norm")
        if self.synthetic_restyle not in SYNTHETIC_RESTYLES:
            raise _fail(f"synthetic_restyle must be one of {', '.join(SYNTHETIC_RESTYLES)}")
        if self.synthetic_norm not in SYNTHETIC_NORMS:
            raise _fail(f"synthetic_norm must be one of {', '.join(SYNTHETIC_NORMS)}, got {self.synthetic_norm!r}")
        _check_float("synthetic_weight", self.synthetic_weight, 0.0, 100.0)
        _check_float("synthetic_ratio", self.synthetic_ratio, 0.0, 4.0)
        if self.augment not in AUGMENTATIONS:
            raise _fail(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.codec not in ("fp32", "int8", "int4"):
            raise _fail(f"codec must be fp32, int8 or int4, got {self.codec!r}")
        _check_int("local_epochs", self.local_epochs, 1, 1000)
        _check_int("batch_size", self.batch_size, 1, 65536)
        _check_float("learning_rate", self.learning_rate, 0.0, 100.0)
        _check_float("momentum", self.momentum, 0.0, 1.0)
        _check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_float("prox_mu", self.prox_mu, 0.0, 1e6)
        _check_int("seed", self.seed, 0, 2**63 - 1)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, value: object) -> TrainConfig:
        if not isinstance(value, dict):
            raise _fail("config must be an object")
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise _fail(f"config has unknown keys {sorted(unknown)}")
        return cls(**value)


@dataclass(frozen=True)
class DeviceState:
    """A device announces itself; retained, and its last will says ``offline``."""

    TYPE: ClassVar[str] = "state"
    device_id: str
    state: Literal["online", "offline"]
    num_samples: int = 0
    label_counts: tuple[float, ...] | None = None
    last_round: int | None = None  # the latest round whose update from this board counted (None: none yet)
    # A replayed state is told apart by these: ``session`` names one run of the agent (random), ``sequence``
    # numbers its states (1, 2, ...; its last will, made when it connects, is 0).
    session: str | None = None
    sequence: int | None = None
    release: int | None = None  # the model release the board runs (None: none deployed)
    release_score: float | None = None  # its accuracy on the board's held-out data, as the board scored it

    def __post_init__(self) -> None:
        _check_device(self.device_id)
        if self.last_round is not None:
            _check_int("last_round", self.last_round, 1, 2**31)
        if self.release is not None:
            _check_int("release", self.release, 1, 2**31)
        if self.release_score is not None:
            _check_float("release_score", self.release_score, 0.0, 1.0)
        if (self.session is None) != (self.sequence is None):
            raise _fail("session and sequence come together")
        if self.session is not None:
            if (
                not isinstance(self.session, str)
                or not 8 <= len(self.session) <= 32
                or not set(self.session) <= _SHA256_HEX
            ):
                raise _fail("session must be 8..32 lowercase hex digits")
            _check_int("sequence", self.sequence, 0, 2**53)
        if self.state not in ("online", "offline"):
            raise _fail(f"state must be online or offline, got {self.state!r}")
        _check_int("num_samples", self.num_samples, 0, 2**40)
        if self.label_counts is not None:
            if len(self.label_counts) > 100_000:
                raise _fail("label_counts too long")
            for count in self.label_counts:
                _check_float("label_counts[]", count)


@dataclass(frozen=True)
class _RoundMessage:
    """What every message of a round carries first: the round and the device it is for (or from)."""

    round: int
    device_id: str

    def __post_init__(self) -> None:
        _check_int("round", self.round, 1)
        _check_device(self.device_id)


@dataclass(frozen=True)
class Task(_RoundMessage):
    """Server -> device: train round ``round`` starting from blob ``model_id``."""

    TYPE: ClassVar[str] = "task"
    model_name: str
    model_id: str
    model_size: int
    config: TrainConfig
    classes: tuple[str, ...]  # the fleet's class names, in the model's order: boards number their data by them
    synthetic_id: str | None = None  # GenFL: a blob of synthetic samples tailored to this device
    synthetic_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.model_name, str) or not 0 < len(self.model_name) <= 64:
            raise _fail("model_name must be a short string")
        try:
            validate_classes(self.classes)
        except GenflError as exc:
            raise _fail(f"classes: {exc}") from exc
        _check_sha256("model_id", self.model_id)
        _check_int("model_size", self.model_size, 1, MAX_BODY_BYTES)
        if self.synthetic_id is None:
            if self.synthetic_size != 0:
                raise _fail("synthetic_size without a synthetic_id")
        else:
            _check_sha256("synthetic_id", self.synthetic_id)
            _check_int("synthetic_size", self.synthetic_size, 1, MAX_BODY_BYTES)
        if not isinstance(self.config, TrainConfig):
            raise _fail("config must be a TrainConfig")


@dataclass(frozen=True)
class Update(_RoundMessage):
    """Device -> server: the trained delta against ``base_model_id``."""

    TYPE: ClassVar[str] = "update"
    base_model_id: str
    num_samples: int
    train_loss: float
    train_accuracy: float
    delta: TensorDict = field(repr=False, compare=False)  # as encoded by ``codec``
    codec: str = "fp32"
    # The global model it started from, evaluated on the device's own data before training: the
    # federation's view of that model on real data it never sent (federated evaluation).
    eval_accuracy: float | None = None
    # GenFL from a pool: for each probe image of the task's synthetic batch, the trained model's probability
    # of the class the probe claims, in 1/255 steps (the fleet's verdict on the pool, image by image).
    probe_scores: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.probe_scores is not None:
            if not isinstance(self.probe_scores, tuple) or len(self.probe_scores) > MAX_PROBES:
                raise _fail(f"probe_scores must be a list of at most {MAX_PROBES} scores")
            for score in self.probe_scores:
                _check_int("probe_scores[]", score, 0, 255)
        if self.codec not in ("fp32", "int8", "int4"):
            raise _fail(f"codec must be fp32, int8 or int4, got {self.codec!r}")
        _check_sha256("base_model_id", self.base_model_id)
        _check_int("num_samples", self.num_samples, 1, 2**40)
        _check_float("train_loss", self.train_loss, 0.0)
        _check_float("train_accuracy", self.train_accuracy, 0.0, 1.0)
        if self.eval_accuracy is not None:
            _check_float("eval_accuracy", self.eval_accuracy, 0.0, 1.0)


@dataclass(frozen=True)
class Failure(_RoundMessage):
    """Device -> server (on the update topic): training for ``round`` failed; do not wait for it."""

    TYPE: ClassVar[str] = "failure"
    reason: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.reason, str) or len(self.reason) > 2000:
            raise _fail("reason must be a string of at most 2000 characters")


PROGRESS_EVERY_S = 10.0  # a working device says so this often; the server re-sends a task after 30 s of silence
DEFAULT_ROUND_TIMEOUT_S = 600.0  # a round leaves its stragglers out after this long (serve, simulate)


@dataclass(frozen=True)
class Progress(_RoundMessage):
    """Device -> server (on the update topic): still at work on ``round`` (``phase``: training); sent every
    few seconds while a job runs, so that a long round is not mistaken for a lost task."""

    TYPE: ClassVar[str] = "progress"
    phase: Literal["training"] = "training"
    seconds: float = 0.0  # how long the job has run

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.phase != "training":
            raise _fail(f"phase must be training, got {self.phase!r}"[:120])
        _check_float("seconds", self.seconds, 0.0, 1e9)


@dataclass(frozen=True)
class Ack(_RoundMessage):
    """Server -> device: the update of ``round`` was accepted (or why not)."""

    TYPE: ClassVar[str] = "ack"
    accepted: bool
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.accepted, bool) or not isinstance(self.reason, str) or len(self.reason) > 500:
            raise _fail("accepted must be a bool and reason a short string")


@dataclass(frozen=True)
class BlobRequest:
    """Device -> server: send these chunks of blob ``blob_id`` (empty = all)."""

    TYPE: ClassVar[str] = "blob-req"
    blob_id: str
    chunks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_sha256("blob_id", self.blob_id)
        if len(self.chunks) > 65536:
            raise _fail("too many chunks requested")
        for index in self.chunks:
            _check_int("chunks[]", index, 0, 2**31)


@dataclass(frozen=True)
class BlobChunk:
    """Server -> device: chunk ``index`` of ``count`` of blob ``blob_id``."""

    TYPE: ClassVar[str] = "blob-chunk"
    blob_id: str
    index: int
    count: int
    total_size: int
    chunk_sha256: str
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_sha256("blob_id", self.blob_id)
        _check_int("count", self.count, 1, 2**31)
        _check_int("index", self.index, 0, self.count - 1)
        _check_int("total_size", self.total_size, 1, MAX_BODY_BYTES)
        _check_sha256("chunk_sha256", self.chunk_sha256)


Message = Union[
    DeviceState, Task, Update, Failure, Progress, Ack, BlobRequest, BlobChunk,
    SecAggKeys, SecAggRoster, SecAggShares, SecAggForward, MaskedUpdate, UnmaskRequest, SecAggUnmask, Release,
]  # fmt: skip
_WIRE_TYPES: dict[str, Any] = {kind.TYPE: kind for kind in SECAGG_MESSAGES}  # each frames itself
_WIRE_TYPES[Release.TYPE] = Release
_M = TypeVar("_M", bound=Message)


def _header_and_body(message: Message) -> tuple[dict[str, Any], bytes]:
    if type(message).TYPE in _WIRE_TYPES:
        return message.to_wire()  # type: ignore[union-attr]
    if isinstance(message, Update):
        header = {
            "round": message.round,
            "device_id": message.device_id,
            "base_model_id": message.base_model_id,
            "num_samples": message.num_samples,
            "train_loss": message.train_loss,
            "train_accuracy": message.train_accuracy,
            "codec": message.codec,
        }
        if message.eval_accuracy is not None:
            header["eval_accuracy"] = message.eval_accuracy
        if message.probe_scores is not None:
            header["probe_scores"] = list(message.probe_scores)

        return header, encode_tensors(message.delta)
    if isinstance(message, BlobChunk):
        header = {
            "blob_id": message.blob_id,
            "index": message.index,
            "count": message.count,
            "total_size": message.total_size,
            "chunk_sha256": message.chunk_sha256,
        }
        return header, message.data
    if isinstance(message, Task):
        header = {
            "round": message.round,
            "device_id": message.device_id,
            "model_name": message.model_name,
            "model_id": message.model_id,
            "model_size": message.model_size,
            "config": message.config.to_json(),
            "classes": list(message.classes),
        }
        if message.synthetic_id is not None:
            header["synthetic_id"] = message.synthetic_id
            header["synthetic_size"] = message.synthetic_size

        return header, b""
    header = {f.name: getattr(message, f.name) for f in fields(message)}
    if isinstance(message, BlobRequest):
        header["chunks"] = list(message.chunks)
    if isinstance(message, DeviceState) and message.label_counts is not None:
        header["label_counts"] = list(message.label_counts)
    if isinstance(message, DeviceState):
        for name in ("last_round", "session", "sequence", "release", "release_score"):
            if header[name] is None:
                del header[name]
    return header, b""


def encode_message(message: Message) -> bytes:
    """Frame a message for the wire."""
    header, body = _header_and_body(message)
    header["type"] = message.TYPE
    header_bytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return _PREFIX.pack(_MAGIC, PROTOCOL_VERSION, len(header_bytes)) + header_bytes + body


def _build(kind: str, header: dict[str, Any], body: bytes) -> Message:
    if kind in _WIRE_TYPES:
        return _WIRE_TYPES[kind].from_wire(header, body)  # type: ignore[no-any-return]
    if kind == "update":
        scores = header.get("probe_scores")
        return Update(**{**header, "probe_scores": None if scores is None else tuple(_as_list(scores))},
                      delta=decode_tensors(body))  # fmt: skip
    if kind == "blob-chunk":
        return BlobChunk(**header, data=body)
    if body:
        raise ProtocolError("bad-frame", f"message {kind!r} carries no body")
    if kind == "task":
        return Task(**{**header, "config": TrainConfig.from_json(header.get("config")),
                       "classes": tuple(_as_list(header.get("classes")))})  # fmt: skip
    if kind == "blob-req":
        return BlobRequest(blob_id=header.get("blob_id"), chunks=tuple(_as_list(header.get("chunks", []))))  # type: ignore[arg-type]
    if kind == "state":
        counts = header.get("label_counts")
        return DeviceState(**{**header, "label_counts": None if counts is None else tuple(_as_list(counts))})
    if kind == "ack":
        return Ack(**header)
    if kind == "failure":
        return Failure(**header)
    if kind == "progress":
        return Progress(**header)
    raise ProtocolError("unknown-type", repr(kind)[:80])


def _as_list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise _fail("expected a list")
    return value


def decode_message(payload: bytes, expect: type[_M] | tuple[type[Message], ...] | None = None) -> _M:
    """Decode one frame into its typed message, or raise :class:`ProtocolError`."""
    if len(payload) < _PREFIX.size:
        raise ProtocolError("bad-frame", f"{len(payload)} bytes is shorter than a frame header")
    magic, version, header_len = _PREFIX.unpack_from(payload)
    if magic != _MAGIC:
        raise ProtocolError("bad-frame", "no GFL magic")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad-version", f"protocol version {version}, this build speaks {PROTOCOL_VERSION}")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(payload):
        raise ProtocolError("bad-frame", f"declared header of {header_len} bytes does not fit")
    if len(payload) - _PREFIX.size - header_len > MAX_BODY_BYTES:
        raise ProtocolError("bad-frame", "body too large")
    header = loads_bounded(payload[_PREFIX.size : _PREFIX.size + header_len], "header")
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("bad-frame", "header must be an object with a type")
    kind = header.pop("type")
    body = bytes(payload[_PREFIX.size + header_len :])
    try:
        message = _build(kind, header, body)
    except TypeError as exc:  # missing or unexpected keyword from a hostile header
        raise ProtocolError("bad-field", f"{kind}: {exc}") from exc
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:  # whatever else a field can provoke
        raise ProtocolError("bad-field", f"{kind}: {type(exc).__name__}") from exc
    expected = (expect,) if isinstance(expect, type) else expect
    if expected is not None and type(message) not in expected:  # exactly: a forwarded share is not a share
        raise ProtocolError("unexpected-type", f"expected {'/'.join(t.TYPE for t in expected)}, got {kind}")
    return message  # type: ignore[return-value]

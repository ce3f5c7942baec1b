"""Training runners: where the agent's training happens.

:class:`InProcessRunner` trains in the calling process (simulations, tests).
It imports torch only when it first trains, so importing it stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol import (
    DataError,
    ModelError,
    ProtocolError,
    Task,
    TensorDict,
    Update,
    clip_update,
    decode_delta,
    decode_synthetic,
    decode_tensors,
    encode_delta,
)

from ._agent import TrainingDone
from ._data import LabeledArrays, check_arrays_fit, in_fleet_order, with_channels

__all__ = ["InProcessRunner"]


def _encoded(delta: TensorDict, codec: str, residual: TensorDict | None) -> tuple[TensorDict, TensorDict | None]:
    """The delta as ``codec`` sends it, last round's residual added first (error feedback), and what the codec lost
    this time (None for fp32)."""
    if codec == "fp32":
        return delta, None
    if residual is not None and all(name in residual and residual[name].shape == delta[name].shape for name in delta):
        delta = {name: (value + residual[name]).astype(value.dtype) if value.dtype.kind == "f" else value
                 for name, value in delta.items()}  # fmt: skip
    encoded = encode_delta(delta, codec)
    sent = decode_delta(encoded, codec, delta)
    return encoded, {name: delta[name] - sent[name] for name in delta if delta[name].dtype.kind == "f"}


def run_task(
    task: Task,
    model_blob: bytes,
    device_id: str,
    data: LabeledArrays,
    classes: tuple[str, ...],
    torch_device: str = "cpu",
    residual: TensorDict | None = None,
    synthetic_blob: bytes | None = None,
    train: Callable[..., Any] | None = None,
) -> tuple[Update, TensorDict | None]:
    """Decode the global model, train on ``data`` (plus the task's synthetic batch), encode the delta.

    ``data`` is labelled by the index of each sample's class in ``classes`` (the board's own names); it is
    numbered by the task's fleet class list before training.

    Returns the update and the new residual: what the codec lost, to be added to
    the next round's delta (error feedback); None for fp32. ``train`` stands in for local training
    (``train_local``'s arguments, a ``LocalResult`` back).
    """
    import models

    from ._training import train_local  # torch lives behind this import

    spec = models.get_spec(task.model_name)
    if len(task.classes) != spec.num_classes:
        raise DataError(f"the task names {len(task.classes)} classes, but {task.model_name} predicts "
                        f"{spec.num_classes}")  # fmt: skip
    data = with_channels(in_fleet_order(data, classes, task.classes, f"{device_id}'s data"), spec.input_shape)
    check_arrays_fit(f"{device_id}'s data", data, task.model_name, spec.input_shape, spec.num_classes)
    global_state = decode_tensors(model_blob)
    synthetic = None
    if synthetic_blob is not None:
        synthetic = decode_synthetic(synthetic_blob, spec.input_shape, spec.num_classes)
    result = (train or train_local)(task.model_name, global_state, data, task.config, torch_device, synthetic)
    codec, clip = task.config.codec, task.config.clip_norm
    if clip is not None:  # DP: the update clipped here, no error feedback carried over, no exact figures sent
        clipped, _ = clip_update(result.delta, clip)
        delta, new_residual = _encoded(clipped, codec, None)
        return Update(round=task.round, device_id=device_id, base_model_id=task.model_id,
                      num_samples=result.num_samples, train_loss=0.0, train_accuracy=0.0, delta=delta,
                      codec=codec), None  # fmt: skip
    delta, new_residual = _encoded(result.delta, codec, residual)
    update = Update(
        round=task.round,
        device_id=device_id,
        base_model_id=task.model_id,
        num_samples=result.num_samples,
        train_loss=result.loss,
        train_accuracy=result.accuracy,
        delta=delta,
        codec=codec,
        eval_accuracy=None if result.eval_accuracy is None else round(result.eval_accuracy, 6),
        probe_scores=result.probe_scores,
    )
    return update, new_residual


class InProcessRunner:
    def __init__(
        self,
        device_id: str,
        data: LabeledArrays,
        classes: tuple[str, ...],
        torch_device: str = "cpu",
        train: Callable[..., Any] | None = None,
    ) -> None:
        self.device_id = device_id
        self.data = data
        self.classes = classes  # the names of data's labels
        self.torch_device = torch_device
        self.train = train  # local training (None: train_local)
        self.residual: TensorDict | None = None  # error feedback for the low-bit codecs

    def start(self, task: Task, model_blob: bytes, done: TrainingDone, synthetic_blob: bytes | None = None) -> None:
        try:
            update, self.residual = run_task(
                task, model_blob, self.device_id, self.data, self.classes, self.torch_device, self.residual,
                synthetic_blob, self.train,
            )  # fmt: skip
        except (DataError, ModelError, ProtocolError, RuntimeError) as exc:  # RuntimeError: torch refused
            done(task, f"{type(exc).__name__}: {exc}")
            return
        done(task, update)

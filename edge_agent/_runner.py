"""Training runners: where the agent's training happens.

:class:`InProcessRunner` trains in the calling process (simulations, tests).
It imports torch only when it first trains, so importing it stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from protocol import DataError, ModelError, ProtocolError, Task, TensorDict, Update, decode_tensors

from ._agent import TrainingDone
from ._data import LabeledArrays, check_arrays_fit

__all__ = ["InProcessRunner"]


def run_task(task: Task, model_blob: bytes, device_id: str, data: LabeledArrays, torch_device: str = "cpu") -> Update:
    """Decode the global model, train on ``data``, and build the update message."""
    import models

    from ._training import train_local  # torch lives behind this import

    spec = models.get_spec(task.model_name)
    check_arrays_fit(f"{device_id}'s data", data, task.model_name, spec.input_shape, spec.num_classes)
    global_state = decode_tensors(model_blob)
    result = train_local(task.model_name, global_state, data, task.config, torch_device)
    return Update(
        round=task.round,
        device_id=device_id,
        base_model_id=task.model_id,
        num_samples=result.num_samples,
        train_loss=result.loss,
        train_accuracy=result.accuracy,
        delta=result.delta,
    )


class InProcessRunner:
    def __init__(
        self,
        device_id: str,
        data: LabeledArrays,
        torch_device: str = "cpu",
        tamper: Callable[[TensorDict], TensorDict] | None = None,
    ) -> None:
        self.device_id = device_id
        self.data = data
        self.torch_device = torch_device
        self.tamper = tamper  # simulations of faulty or malicious devices only

    def start(self, task: Task, model_blob: bytes, done: TrainingDone) -> None:
        try:
            update = run_task(task, model_blob, self.device_id, self.data, self.torch_device)
            if self.tamper is not None:
                update = dataclasses.replace(update, delta=self.tamper(update.delta))
        except (DataError, ModelError, ProtocolError) as exc:
            done(task, f"{type(exc).__name__}: {exc}")
            return
        done(task, update)

"""A release scored on the board's own data: top-1 accuracy of an ONNX model on the held-out slice the board keeps
(its data's test split, never trained on; or, for data without one, a fixed slice of it), with onnxruntime only
(no torch on a board for inference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protocol import ModelError

from ._data import DeviceDataset, in_fleet_order, split_held_out, with_channels

__all__ = ["score_release"]


def score_release(model: Path, dataset: DeviceDataset, fleet_classes: tuple[str, ...], batch: int = 256) -> float:
    """The model's accuracy on ``dataset``'s held-out slice, labelled by the fleet's classes; ModelError for a
    model that does not load, does not take the data, or answers NaN."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        spec = session.get_inputs()[0]
        shape = tuple(int(d) for d in spec.shape[1:])
    except Exception as exc:  # onnxruntime's own error types
        raise ModelError(f"{model}: onnxruntime cannot load it ({exc})") from exc
    if len(shape) != 3:
        raise ModelError(f"{model}: takes input {spec.shape}, not images")
    # its test split; a board whose data has none (a train/ folder only) holds out a fixed slice of it: seen in
    # training, so the score is high, but the same slice for every release, so releases still compare
    test = dataset.test if len(dataset.test) else split_held_out(dataset.train)[1]
    held = with_channels(in_fleet_order(test, dataset.classes, fleet_classes, "the board's data"), shape)
    if len(held) == 0:
        raise ModelError("the board holds no held-out images to score a release on")
    correct = 0
    for start in range(0, len(held), batch):
        images = held.images[start : start + batch].astype(np.float32) / 255.0
        try:
            scores = np.asarray(session.run(None, {spec.name: images})[0], dtype=np.float64)
        except Exception as exc:
            raise ModelError(f"{model}: onnxruntime could not run it on the board's images ({exc})") from exc
        if scores.shape != (len(images), len(fleet_classes)) or not np.isfinite(scores).all():
            raise ModelError(f"{model}: answered {scores.shape} scores, or NaN: not a model of the fleet's classes")
        correct += int((scores.argmax(axis=1) == held.labels[start : start + batch]).sum())
    return correct / len(held)

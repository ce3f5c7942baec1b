"""Synthetic batches on the wire: what the GenFL server sends a device with its task.

A batch is a safetensors blob of ``images`` (uint8, N x C x H x W, the same
layout as a device's own data), ``labels`` (int64, N) and, optionally,
``soft_labels`` (float16, N x classes: the ensemble's class probabilities)
and, optionally, ``probe_images`` / ``probe_labels``: pool images of classes
the device holds, not for training but for the device to judge (its trained
model's probability of each probe's class goes back in its update, so that
the fleet curates a pool the server cannot judge itself).
:func:`decode_synthetic` checks every field against the model the task names,
so a corrupt or hostile blob is a :class:`ProtocolError`, never a crash in
training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._errors import ProtocolError
from ._tensors import decode_tensors, encode_tensors

__all__ = ["MAX_PROBES", "SyntheticBatch", "decode_synthetic", "encode_synthetic"]

_KIND = "genfl-synthetic"
_TENSORS = frozenset({"images", "labels", "soft_labels", "probe_images", "probe_labels"})
MAX_PROBES = 4096  # probes one batch may carry (and scores one update may return)


@dataclass(frozen=True)
class SyntheticBatch:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    soft_labels: np.ndarray | None = None  # float16 (N, classes), rows sum to 1
    probe_images: np.ndarray | None = None  # uint8 (P, C, H, W): to be judged, not trained on
    probe_labels: np.ndarray | None = None  # int64 (P,): the class each probe claims to be

    @property
    def probes(self) -> int:
        return 0 if self.probe_labels is None else len(self.probe_labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.soft_labels, self.probe_images, self.probe_labels) if a is not None)
        return self.images.nbytes + self.labels.nbytes + extra


def encode_synthetic(batch: SyntheticBatch) -> bytes:
    tensors = {"images": batch.images, "labels": batch.labels.astype(np.int64)}
    if batch.soft_labels is not None:
        tensors["soft_labels"] = batch.soft_labels.astype(np.float16)
    if batch.probe_images is not None and batch.probe_labels is not None:
        tensors["probe_images"] = batch.probe_images
        tensors["probe_labels"] = batch.probe_labels.astype(np.int64)
    return encode_tensors(tensors, {"kind": _KIND})


def _check_images(name: str, images: np.ndarray, labels: np.ndarray, input_shape: tuple[int, ...],
                  num_classes: int) -> None:  # fmt: skip
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
        raise ProtocolError("bad-synthetic", f"{name} {images.dtype} {images.shape}, the model takes {input_shape}")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ProtocolError("bad-synthetic", f"{name} labels {labels.dtype} {labels.shape} for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ProtocolError("bad-synthetic", f"{name} labels outside 0..{num_classes - 1}")


def decode_synthetic(blob: bytes, input_shape: tuple[int, ...], num_classes: int) -> SyntheticBatch:
    """Parse and check a synthetic batch for a model taking ``input_shape`` with ``num_classes``."""
    tensors = decode_tensors(blob)
    if not {"images", "labels"} <= set(tensors) <= _TENSORS:
        raise ProtocolError("bad-synthetic", f"unexpected tensors {sorted(tensors)[:5]}")
    if ("probe_images" in tensors) != ("probe_labels" in tensors):
        raise ProtocolError("bad-synthetic", "probe images and probe labels go together")
    images, labels, soft = tensors["images"], tensors["labels"], tensors.get("soft_labels")
    _check_images("images", images, labels, input_shape, num_classes)
    probe_images, probe_labels = tensors.get("probe_images"), tensors.get("probe_labels")
    if probe_images is not None and probe_labels is not None:
        _check_images("probe images", probe_images, probe_labels, input_shape, num_classes)
        if len(probe_labels) > MAX_PROBES:
            raise ProtocolError("bad-synthetic", f"{len(probe_labels)} probes, at most {MAX_PROBES}")
    if soft is not None:
        if soft.dtype != np.float16 or soft.shape != (len(images), num_classes):
            raise ProtocolError("bad-synthetic", f"soft labels {soft.dtype} {soft.shape}")
        values = soft.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or np.abs(values.sum(1) - 1).max() > 0.02:
            raise ProtocolError("bad-synthetic", "soft labels must be probability rows")
    return SyntheticBatch(images=images, labels=labels, soft_labels=soft, probe_images=probe_images,
                          probe_labels=probe_labels)  # fmt: skip

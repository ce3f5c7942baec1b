"""Synthetic batches on the wire: what the GenFL server sends a device with its task.

A batch is a safetensors blob of ``images`` (uint8, N x C x H x W, the same
layout as a device's own data), ``labels`` (int64, N) and, optionally,
``soft_labels`` (float16, N x classes: the ensemble's class probabilities).
:func:`decode_synthetic` checks every field against the model the task names,
so a corrupt or hostile blob is a :class:`ProtocolError`, never a crash in
training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._errors import ProtocolError
from ._tensors import decode_tensors, encode_tensors

__all__ = ["SyntheticBatch", "decode_synthetic", "encode_synthetic"]

_KIND = "genfl-synthetic"


@dataclass(frozen=True)
class SyntheticBatch:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    soft_labels: np.ndarray | None = None  # float16 (N, classes), rows sum to 1

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        soft = 0 if self.soft_labels is None else self.soft_labels.nbytes
        return self.images.nbytes + self.labels.nbytes + soft


def encode_synthetic(batch: SyntheticBatch) -> bytes:
    tensors = {"images": batch.images, "labels": batch.labels.astype(np.int64)}
    if batch.soft_labels is not None:
        tensors["soft_labels"] = batch.soft_labels.astype(np.float16)
    return encode_tensors(tensors, {"kind": _KIND})


def decode_synthetic(blob: bytes, input_shape: tuple[int, ...], num_classes: int) -> SyntheticBatch:
    """Parse and check a synthetic batch for a model taking ``input_shape`` with ``num_classes``."""
    tensors = decode_tensors(blob)
    if not {"images", "labels"} <= set(tensors) <= {"images", "labels", "soft_labels"}:
        raise ProtocolError("bad-synthetic", f"unexpected tensors {sorted(tensors)[:5]}")
    images, labels, soft = tensors["images"], tensors["labels"], tensors.get("soft_labels")
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
        raise ProtocolError("bad-synthetic", f"images {images.dtype} {images.shape}, the model takes {input_shape}")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ProtocolError("bad-synthetic", f"labels {labels.dtype} {labels.shape} for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ProtocolError("bad-synthetic", f"labels outside 0..{num_classes - 1}")
    if soft is not None:
        if soft.dtype != np.float16 or soft.shape != (len(images), num_classes):
            raise ProtocolError("bad-synthetic", f"soft labels {soft.dtype} {soft.shape}")
        values = soft.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or np.abs(values.sum(1) - 1).max() > 0.02:
            raise ProtocolError("bad-synthetic", "soft labels must be probability rows")
    return SyntheticBatch(images=images, labels=labels, soft_labels=soft)

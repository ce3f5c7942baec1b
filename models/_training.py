"""One ``train_one_epoch`` / ``evaluate`` pair, shared by every training path.

Images are held as uint8 (N, C, H, W) and turned into floats in [0, 1] one
batch at a time, so a device keeps its data set at a quarter of the size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EpochResult",
    "SyntheticMix",
    "augment",
    "evaluate",
    "predict_logits",
    "to_float",
    "train_one_epoch",
]


@dataclass(frozen=True)
class EpochResult:
    loss: float
    accuracy: float
    samples: int


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) -> float32 in [0, 1]."""
    tensor = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    return tensor.to(torch.float32).div_(255.0)


def augment(images: torch.Tensor, kind: str, pad: int = 4) -> torch.Tensor:
    """Random crops of the ``pad``-padded images (reflected edges) and horizontal flips, one draw per sample.

    ``kind`` ``none`` returns the images as they are. Draws come from torch's global generator (seeded per
    task in local training). Works on uint8 or float (N, C, H, W) batches.
    """
    if kind == "none" or len(images) == 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=images.device)
    rows = (torch.arange(height, device=images.device)[None, :] + dy[:, None])[:, :, None]  # (N, H, 1)
    cols = (torch.arange(width, device=images.device)[None, :] + dx[:, None])[:, None, :]  # (N, 1, W)
    cropped = padded[torch.arange(n, device=images.device)[:, None, None], :, rows, cols]  # (N, H, W, C)
    cropped = cropped.permute(0, 3, 1, 2)
    flip = torch.rand(n, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


@dataclass(frozen=True)
class SyntheticMix:
    """GenFL's synthetic samples for local training, and the weight of their loss."""

    images: torch.Tensor  # uint8 (N, C, H, W) on the model's device
    labels: torch.Tensor  # int64 (N,)
    soft_labels: torch.Tensor | None  # float32 (N, classes), or None for hard labels
    weight: float
    ratio: float = 1.0  # synthetic samples per real sample in each batch
    norm: str = "joint"  # joint or frozen (protocol.SyntheticNorm)

    @classmethod
    def on(cls, device: str, images: np.ndarray, labels: np.ndarray, soft_labels: np.ndarray | None,
           weight: float, ratio: float = 1.0, norm: str = "joint") -> SyntheticMix:  # fmt: skip
        soft = None if soft_labels is None else torch.from_numpy(soft_labels.astype(np.float32)).to(device)
        return cls(torch.from_numpy(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device), soft,
                   weight, ratio, norm)  # fmt: skip

    def loss(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.soft_labels is None:
            return F.cross_entropy(logits, self.labels[index])
        return -(self.soft_labels[index] * F.log_softmax(logits, dim=1)).sum(1).mean()

    def logits(self, model: nn.Module, real: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits for the real and the synthetic inputs, BatchNorm used as ``norm`` says."""
        if self.norm == "joint":
            joint = model(torch.cat([real, extra]))
            return joint[: len(real)], joint[len(real) :]
        logits = model(real)  # frozen: the synthetic pass on the running statistics of real data, left as they are
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.eval()
        try:
            return logits, model(extra)
        finally:
            for norm in norms:
                norm.train()


def train_one_epoch(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    rng: np.random.Generator,
    prox_mu: float = 0.0,
    anchor: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    synthetic: SyntheticMix | None = None,
    augmentation: str = "none",
) -> EpochResult:
    """One pass over (images, labels) in a shuffled order drawn from ``rng``.

    With ``prox_mu > 0`` adds FedProx's ``mu/2 * ||w - anchor||^2`` to the loss,
    ``anchor`` pairing each trained parameter with its value in the round's global model.
    Images may be numpy arrays (CPU) or uint8 tensors already on the model's device.
    With ``synthetic``, every batch of B real samples is joined by ``ratio`` x B synthetic samples drawn at
    random (passed through BatchNorm as ``synthetic.norm`` says), and their loss is added with its weight.
    ``augmentation`` (``crop-flip``) applies to both.
    """
    model.train()
    order = rng.permutation(len(labels))
    device = next(model.parameters()).device
    seen = 0
    # Summed as tensors: a float() per batch would stall a GPU at every step.
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), dtype=torch.int64, device=device)
    targets_all = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(labels.astype(np.int64))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if len(index) < 2:  # BatchNorm needs two samples to estimate a variance
            continue
        batch = torch.from_numpy(index).to(images.device) if isinstance(images, torch.Tensor) else index
        inputs = to_float(augment(torch.as_tensor(images[batch]), augmentation)).to(device)
        targets = targets_all[batch]
        if synthetic is None:
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
        else:
            count = max(1, round(len(index) * synthetic.ratio))
            drawn = torch.from_numpy(rng.integers(0, len(synthetic.labels), size=count)).to(device)
            extra = to_float(augment(synthetic.images[drawn], augmentation)).to(device)
            logits, synthetic_logits = synthetic.logits(model, inputs, extra)
            loss = F.cross_entropy(logits, targets) + synthetic.weight * synthetic.loss(synthetic_logits, drawn)
        if prox_mu > 0.0 and anchor is not None:
            proximal = sum(((p - a) ** 2).sum() for p, a in anchor)
            loss = loss + 0.5 * prox_mu * proximal
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(index)
        correct_sum += (logits.argmax(1) == targets).sum()
        seen += len(index)
    if seen == 0:
        return EpochResult(loss=0.0, accuracy=0.0, samples=0)
    return EpochResult(loss=float(loss_sum) / seen, accuracy=int(correct_sum) / seen, samples=seen)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Logits on the CPU for uint8 images, computed on whichever device the model is on."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [
        model(to_float(images[start : start + batch_size]).to(device)).cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0)


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> EpochResult:
    """Mean cross-entropy and top-1 accuracy in eval mode."""
    if len(labels) == 0:
        return EpochResult(loss=0.0, accuracy=0.0, samples=0)
    logits = predict_logits(model, images, batch_size)
    targets = torch.from_numpy(labels.astype(np.int64))
    loss = float(F.cross_entropy(logits, targets))
    accuracy = float((logits.argmax(1) == targets).float().mean())
    return EpochResult(loss=loss, accuracy=accuracy, samples=len(labels))

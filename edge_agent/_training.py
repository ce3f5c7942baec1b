"""Local training for one round: global model in, delta out. Imports torch.

The daemon never imports this module itself; the in-memory simulation calls
it in-process and the MQTT agent runs it in a worker process.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

import models
from protocol import SyntheticBatch, TensorDict, TrainConfig

from ._data import LabeledArrays

__all__ = ["LocalResult", "probe_scores", "train_local"]


@dataclass(frozen=True)
class LocalResult:
    delta: TensorDict  # trained minus global, per tensor (same dtypes as the model)
    num_samples: int
    loss: float
    accuracy: float
    eval_accuracy: float | None = None  # the global model on this data, before training
    probe_scores: tuple[int, ...] | None = None  # the trained model's probability of each probe's class, x 255


def _torch_seed(seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"torch|{seed}".encode()).digest()[:8], "little") >> 1


def _restyle(config: TrainConfig, data: LabeledArrays, synthetic: SyntheticBatch | None) -> str:
    """How this round bridges a style gap between the device's images and its synthetic batch ("auto" decided)."""
    restyle = config.synthetic_restyle or "none"
    if restyle == "auto":
        assert synthetic is not None
        restyle = "real" if models.colour_gap(data.images, synthetic.images) > models.STYLE_GAP_NATS else "none"
    return restyle


def _own_images(
    data: LabeledArrays, synthetic: SyntheticBatch | None, restyle: str, seed: int, device: str
) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """The device's images and labels to train on: with ``restyle`` "real", half of the images (a fresh half each
    round) take the synthetic images' colours, so that colour says nothing of real or synthetic, nor of which
    classes a device lacks; on an accelerator, kept there as uint8 (one copy per round)."""
    images: np.ndarray | torch.Tensor = data.images
    labels: np.ndarray | torch.Tensor = data.labels
    if restyle == "real":
        assert synthetic is not None
        half = np.random.default_rng([seed, 1]).random(len(data)) < 0.5
        images = models.colours_like(data.images, synthetic.images, only=half)
    if device != "cpu":
        images = torch.from_numpy(np.asarray(images)).to(device)
        labels = torch.from_numpy(data.labels.astype(np.int64)).to(device)
    return images, labels


def train_local(
    model_name: str,
    global_state: TensorDict,
    data: LabeledArrays,
    config: TrainConfig,
    device: str = "cpu",
    synthetic: SyntheticBatch | None = None,
) -> LocalResult:
    """Train ``config.local_epochs`` epochs from ``global_state`` on ``data``.

    With a ``synthetic`` batch (GenFL) each step also takes ``config.synthetic_ratio``
    synthetic samples per real one and adds their loss times ``config.synthetic_weight``.

    Everything random (shuffling, dropout) derives from ``config.seed``, which
    the coordinator sets per device and round: same task, same result.
    """
    model = models.build_model(model_name)
    models.load_state(model, global_state)
    model.to(device)
    before = models.evaluate(model, data.images, data.labels).accuracy if len(data) else None
    mixing = synthetic is not None and len(synthetic) > 0 and config.synthetic_weight > 0
    restyle = _restyle(config, data, synthetic) if mixing else "none"
    images, labels = _own_images(data, synthetic, restyle, config.seed, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )
    # (parameter, global value) pairs, taken before fake quantization re-registers the weights
    anchor: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    if config.prox_mu > 0:
        anchor = [(p, p.detach().clone()) for p in model.parameters()]
    mix = _synthetic_mix(config, data, synthetic, restyle, device) if mixing else None
    rng = np.random.default_rng(config.seed)
    result = models.EpochResult(loss=0.0, accuracy=0.0, samples=0)
    quantization = models.fake_quantized(model) if config.qat else contextlib.nullcontext(model)
    with torch.random.fork_rng(devices=[]), quantization:
        torch.manual_seed(_torch_seed(config.seed))
        for _ in range(config.local_epochs):
            result = models.train_one_epoch(
                model,
                images,
                labels,
                optimizer,
                batch_size=config.batch_size,
                rng=rng,
                prox_mu=config.prox_mu,
                anchor=anchor,
                synthetic=mix,
                augmentation=config.augment,
            )
    scores = None
    if synthetic is not None and synthetic.probe_images is not None and synthetic.probe_labels is not None:
        scores = probe_scores(model, synthetic.probe_images, synthetic.probe_labels)
    trained = models.model_state(model.cpu())
    delta = {name: trained[name] - global_state[name] for name in trained}
    return LocalResult(delta=delta, num_samples=len(data), loss=result.loss, accuracy=result.accuracy,
                       eval_accuracy=before, probe_scores=scores)  # fmt: skip


def _synthetic_mix(
    config: TrainConfig, data: LabeledArrays, synthetic: SyntheticBatch | None, restyle: str, device: str
) -> models.SyntheticMix:
    """The synthetic batch on ``device``, in the devices' colours where the task restyles it so."""
    assert synthetic is not None
    pictures = models.restyled(synthetic.images, data.images) if restyle == "synthetic" else synthetic.images
    return models.SyntheticMix.on(device, pictures, synthetic.labels, synthetic.soft_labels,
                                  config.synthetic_weight, config.synthetic_ratio, config.synthetic_norm)  # fmt: skip


def probe_scores(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[int, ...]:
    """The model's probability of each image's claimed class, in 1/255 steps: this device's verdict on
    pool images of the classes it holds (it knows what they look like; the server does not)."""
    if len(labels) == 0:
        return ()
    probabilities = torch.softmax(models.predict_logits(model, images), dim=1)
    claimed = probabilities[torch.arange(len(labels)), torch.from_numpy(labels.astype(np.int64))]
    return tuple(int(v) for v in torch.round(claimed * 255.0).clamp(0, 255).to(torch.int64).tolist())

"""Where GenFL's synthetic samples come from: the :class:`Generator` interface and its two kinds.

``data-free`` (default) learns on the server from what the server may see: the
devices' models of the round (the global model plus each update), the new
global model, and per-device label counts. In the spirit of FedFTG (Zhang et
al. 2022) and DENSE (Zhang et al. 2022) it trains a class-conditional image
generator with

* the cross-entropy of the label-count weighted ensemble of the devices'
  models on the class it was asked for (each device speaks for the classes it
  holds),
* BatchNorm-statistics matching per teacher (DENSE): the features a teacher
  computes for the images it is asked about must have the mean and variance
  its own BatchNorm layers saw on its real data,
* a diversity term (mode seeking: images must differ as much as their noise),
* an adversarial term: samples where the global model still disagrees with the
  ensemble are worth more,

and, when asked, distils the ensemble into the global model on those samples
(and on a replay pool of earlier rounds' images). Images are sampled the way
they were optimised (BatchNorm in train mode, on mixed-class batches). The
generator is kept across rounds and runs on ``cuda`` when present.

``local-pipeline`` wraps a text-to-image pipeline the operator already has on
disk (see :mod:`cloud_server.learning._local_pipeline`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import models
from protocol import ConfigError, TensorDict

from ._genfl_config import GENERATOR_ADAM_BETAS, GenflConfig

log = logging.getLogger("genfl.server")

__all__ = [
    "ConditionalImageGenerator",
    "DataFreeGenerator",
    "FitReport",
    "Generator",
    "Teachers",
    "class_weights",
    "recognised_share",
    "train_on_synthetic",
]


_MIN_SAY = 0.02  # a teacher with less say in a class is not asked about it (it would barely count)


def class_weights(label_counts: list[np.ndarray | None], num_classes: int) -> np.ndarray:
    """(devices, classes): how much each device's model speaks for each class (columns sum to 1).

    A device speaks for a class in proportion to how many samples of it it holds (FedFTG's
    class-wise ensemble). Devices that share no counts, or classes nobody reports, get equal say.
    Noisy counts (Laplace) may be negative; they are clipped at zero first.
    """
    devices = len(label_counts)
    table = np.ones((devices, num_classes), dtype=np.float64)
    known = [i for i, c in enumerate(label_counts) if c is not None and len(c) == num_classes]
    if known:
        for i in known:
            table[i] = np.clip(np.asarray(label_counts[i], dtype=np.float64), 0.0, None)
        for i in set(range(devices)) - set(known):
            table[i] = table[known].mean(0)
    totals = table.sum(0, keepdims=True)
    empty = totals[0] <= 0
    table[:, empty] = 1.0
    return table / table.sum(0, keepdims=True)


@dataclass
class Teachers:
    """The round's ensemble: each device's model (global + its update) and how much it speaks per class."""

    model_name: str
    states: list[TensorDict]
    weights: np.ndarray  # (devices, classes), columns sum to 1
    global_state: TensorDict  # the new global model (BatchNorm statistics, student for distillation)


@dataclass(frozen=True)
class FitReport:
    seconds: float
    steps: int
    ensemble_accuracy: float  # share of the last generated batch the ensemble labels as asked
    distill_loss: float | None


class Generator(ABC):
    """Makes images for given labels; may learn from each round's teachers."""

    name: str

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether samples are worth sending yet (a data-free generator needs a round to learn first)."""

    @abstractmethod
    def fit(self, teachers: Teachers) -> tuple[TensorDict, FitReport]:
        """Learn from the round; returns the global model to use next (distilled or as given)."""

    @abstractmethod
    def sample(self, labels: np.ndarray, seed: int) -> np.ndarray:
        """uint8 images (N, C, H, W) for ``labels``."""

    def soft_labels(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """The ensemble's class probabilities for ``images`` made for ``labels`` (float32), if it holds one."""
        return None


class ConditionalImageGenerator(nn.Module):
    """Noise and a class label in, an image with pixels in [0, 1] out (a small DCGAN-style decoder)."""

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], z_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        if height != width_px or height % 4:
            raise ConfigError(
                f"the data-free generator needs square images with a side divisible by 4, got {image_shape}"
            )
        self.z_dim = z_dim
        self.start = height // 4
        self.embed = nn.Embedding(num_classes, z_dim)
        self.project = nn.Sequential(
            nn.Linear(2 * z_dim, 2 * width * self.start**2), nn.BatchNorm1d(2 * width * self.start**2)
        )
        self.width = width
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.project(torch.cat([z, self.embed(labels)], dim=1))
        return self.body(hidden.view(len(z), 2 * self.width, self.start, self.start))


def generator_threads() -> int:
    """CPU threads for the generator: all cores, or ``GENFL_GENERATOR_THREADS`` (on a shared machine
    more threads than free cores make OpenMP spin: 1 is then several times faster)."""
    setting = os.environ.get("GENFL_GENERATOR_THREADS")
    if setting is None:
        return os.cpu_count() or 1
    if not setting.isdigit() or int(setting) < 1:
        raise ConfigError(f"GENFL_GENERATOR_THREADS must be a positive integer, got {setting!r}")
    return int(setting)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Use ``count`` CPU threads inside (simulations pin torch to one thread per device)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _BatchNormMatch:
    """Forward hooks that measure how far a batch's feature statistics are from a model's running ones."""

    def __init__(self, model: nn.Module) -> None:
        self.losses: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0]
        if len(x) < 2:
            return  # one sample has no variance to compare
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False)
        assert isinstance(module, nn.BatchNorm2d) and module.running_mean is not None and module.running_var is not None
        self.losses.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    def take(self) -> torch.Tensor:
        total = torch.stack(self.losses).sum() if self.losses else torch.zeros(())
        self.losses = []
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _diversity(z: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """FedGen/FedFTG's mode-seeking term: small when images differ as much as their noise does."""
    flat = images.view(len(images), -1)
    image_distance = torch.cdist(flat, flat, p=1) / flat.shape[1]
    noise_distance = torch.cdist(z, z, p=2) / z.shape[1]
    return torch.exp(-(image_distance * noise_distance).mean())


class DataFreeGenerator(Generator):
    name = "data-free"

    def __init__(self, model_name: str, settings: GenflConfig = GenflConfig(), *, device: str = "cpu",
                 seed: int = 0) -> None:  # fmt: skip
        spec = models.get_spec(model_name)
        self.model_name = model_name
        self.num_classes = spec.num_classes
        self.settings = settings
        self.device = device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ConditionalImageGenerator(
                spec.num_classes, spec.input_shape, settings.generator_z_dim, settings.generator_width
            )
        self.net.to(device)
        self.optimizer = torch.optim.Adam(
            self.net.parameters(), lr=settings.generator_learning_rate, betas=GENERATOR_ADAM_BETAS
        )
        self._rng = torch.Generator(device="cpu").manual_seed(seed)
        self._teachers: list[nn.Module] = []
        self._weights: torch.Tensor | None = None
        self._teacher_statistics: list[_BatchNormMatch] = []
        self._replay: torch.Tensor | None = None  # (images, labels) of earlier rounds, for distillation
        self._replay_labels: torch.Tensor | None = None
        self.fits = 0

    @property
    def ready(self) -> bool:
        return self.fits > 0

    def _build(self, state: TensorDict) -> nn.Module:
        model = models.build_model(self.model_name)
        models.load_state(model, state)
        model.to(self.device).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

    def _ensemble_logits(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per sample, the teachers' logits weighted by how much each speaks for the sample's class.

        A teacher runs only on the samples of classes it speaks for (weight at least
        ``_MIN_SAY``): on skewed data that is a few teachers per class, not all of them.
        """
        assert self._weights is not None
        per_sample = self._weights[:, labels]  # (teachers, N)
        out = torch.zeros(len(images), self.num_classes, device=images.device)
        for teacher, weights in zip(self._teachers, per_sample):
            rows = torch.nonzero(weights > 0).squeeze(1)
            if len(rows):
                out = out.index_add(0, rows, weights[rows].unsqueeze(1) * teacher(images[rows]))
        return out

    def _teacher_bn_loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Each teacher's BatchNorm mismatch on the rows it was asked about, weighted by its share of them."""
        assert self._weights is not None
        share = (self._weights[:, labels] > 0).float().mean(1)  # (teachers,)
        total = torch.zeros((), device=labels.device)
        for statistics, weight in zip(self._teacher_statistics, share):
            loss = statistics.take()
            if weight > 0:
                total = total + weight * loss
        return total / share.sum().clamp(min=1e-8)

    def _noise(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(count, self.settings.generator_z_dim, generator=self._rng).to(self.device)
        labels = torch.randint(0, self.num_classes, (count,), generator=self._rng).to(self.device)
        return z, labels

    def fit(self, teachers: Teachers) -> tuple[TensorDict, FitReport]:
        started = time.perf_counter()
        s = self.settings
        with _threads(generator_threads()), torch.random.fork_rng(devices=[]):
            self._teachers = [self._build(state) for state in teachers.states]
            weights = teachers.weights
            say = np.where((weights >= _MIN_SAY) | (weights == weights.max(0)), weights, 0.0)
            say = say / say.sum(0, keepdims=True)
            self._weights = torch.tensor(say, dtype=torch.float32, device=self.device)
            student = self._build(teachers.global_state)
            if s.bn_per_teacher:
                self._teacher_statistics = [_BatchNormMatch(teacher) for teacher in self._teachers]
            statistics = _BatchNormMatch(student)
            self.net.train()
            hits = 0.0
            for _ in range(s.generator_steps):
                z, labels = self._noise(s.generator_batch)
                images = self.net(z, labels)
                ensemble = self._ensemble_logits(images, labels)
                student_logits = student(images)
                bn_loss = statistics.take()
                if s.bn_per_teacher:
                    bn_loss = self._teacher_bn_loss(labels)
                agree = (ensemble.argmax(1) == labels).float()
                student_log_p = F.log_softmax(student_logits / s.distill_temperature, 1)
                # log-space target: with a softmax target, a probability that underflows to 0 has a NaN gradient
                ensemble_log_p = F.log_softmax(ensemble / s.distill_temperature, 1)
                divergence = F.kl_div(student_log_p, ensemble_log_p, reduction="none", log_target=True).sum(1)
                disagreement = (divergence * agree).mean()
                loss = (
                    F.cross_entropy(ensemble, labels)
                    + s.generator_bn_weight * bn_loss
                    + s.generator_diversity_weight * _diversity(z, images)
                    - s.generator_adversarial_weight * disagreement
                )
                self.optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):  # teachers from a diverged device: skip rather than poison the generator
                    log.warning("generator step skipped: loss %s", float(loss.detach()))
                    continue
                loss.backward()
                if not torch.isfinite(nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)):
                    log.warning("generator step skipped: non-finite gradient")  # a step would poison the generator
                    continue
                self.optimizer.step()
                hits = float(agree.mean())
            statistics.remove()
            for teacher_statistics in self._teacher_statistics:
                teacher_statistics.remove()
            self._teacher_statistics = []
            self.fits += 1
            new_state, distill_loss = teachers.global_state, None
            if s.distill_steps > 0:
                new_state, distill_loss = self._distill(teachers.global_state)
        report = FitReport(time.perf_counter() - started, s.generator_steps, hits, distill_loss)
        return new_state, report

    def _distill(self, global_state: TensorDict) -> tuple[TensorDict, float]:
        """Move the global model towards the ensemble on fresh synthetic samples (BatchNorm statistics kept)."""
        s = self.settings
        student = models.build_model(self.model_name)
        models.load_state(student, global_state)
        student.to(self.device).eval()  # eval: synthetic batches must not overwrite the running statistics
        optimizer = torch.optim.SGD(student.parameters(), lr=s.distill_learning_rate, momentum=s.server_momentum)
        loss_value = 0.0
        for _ in range(s.distill_steps):
            with torch.no_grad():
                z, labels = self._noise(s.generator_batch)
                images = self._generate(z, labels)
                images, labels = self._with_replay(images, labels)
                target = F.softmax(self._ensemble_logits(images, labels) / s.distill_temperature, 1)
            loss = F.kl_div(F.log_softmax(student(images) / s.distill_temperature, 1), target, reduction="batchmean")
            if not torch.isfinite(loss):
                log.warning("distillation diverged (loss %s); keeping the aggregated model", float(loss.detach()))
                return global_state, float("nan")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 5.0)
            optimizer.step()
            loss_value = float(loss.detach())
        return models.model_state(student.cpu()), loss_value

    def _with_replay(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep a random share of this batch in the replay pool; return the batch joined by as many replayed."""
        capacity = self.settings.replay
        if capacity <= 0:
            return images, labels
        if self._replay is None or self._replay_labels is None:
            self._replay, self._replay_labels = images[:0].clone(), labels[:0].clone()
        old, old_labels = self._replay, self._replay_labels
        picked = torch.randperm(len(old), generator=self._rng)[: len(images)].to(self.device)
        joined, joined_labels = torch.cat([images, old[picked]]), torch.cat([labels, old_labels[picked]])
        pool, pool_labels = torch.cat([old, images]), torch.cat([old_labels, labels])
        if len(pool) > capacity:  # drop a random part of the oldest and newest alike
            keep = torch.randperm(len(pool), generator=self._rng)[:capacity].to(self.device)
            pool, pool_labels = pool[keep], pool_labels[keep]
        self._replay, self._replay_labels = pool, pool_labels
        return joined, joined_labels

    @torch.no_grad()
    def _generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images for noise and labels, the way they were optimised: in train mode (batch statistics), without
        touching the generator's running statistics; in eval mode without ``train_mode_sampling``."""
        if not self.settings.train_mode_sampling:
            self.net.eval()
            return self.net(z, labels)
        buffers = {name: value.clone() for name, value in self.net.named_buffers()}
        self.net.train()
        try:
            return self.net(z, labels)
        finally:
            for name, value in self.net.named_buffers():
                value.copy_(buffers[name])

    @torch.no_grad()
    def sample(self, labels: np.ndarray, seed: int) -> np.ndarray:
        """Images for ``labels``, made in shuffled mixed-class batches of the training batch size."""
        rng = torch.Generator(device="cpu").manual_seed(seed)
        if len(labels) == 0:
            spec = models.get_spec(self.model_name)
            return np.zeros((0, *spec.input_shape), dtype=np.uint8)
        order = torch.randperm(len(labels), generator=rng)
        wanted = torch.from_numpy(labels.astype(np.int64))[order]
        z = torch.randn(len(labels), self.settings.generator_z_dim, generator=rng)
        size = max(self.settings.generator_batch, 2)
        out = torch.empty(len(labels), *models.get_spec(self.model_name).input_shape)
        for start in range(0, len(labels), size):
            stop = min(len(labels), start + size)
            if stop - start < 2 and start > 0:  # a lone last sample: one batch statistic is no statistic
                start = stop - 2
            part = self._generate(z[start:stop].to(self.device), wanted[start:stop].to(self.device)).cpu()
            out[order[start:stop]] = part
        return (out * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()

    @torch.no_grad()
    def soft_labels(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """The ensemble's probabilities (at ``soft_temperature``) for images made for ``labels``."""
        if not self._teachers:
            return None
        out = []
        for start in range(0, len(images), 512):
            batch = models.to_float(images[start : start + 512]).to(self.device)
            wanted = torch.from_numpy(labels[start : start + 512].astype(np.int64)).to(self.device)
            logits = self._ensemble_logits(batch, wanted)
            out.append(F.softmax(logits / self.settings.soft_temperature, 1).cpu())
        return torch.cat(out).numpy()


@torch.no_grad()
def recognised_share(model_name: str, state: TensorDict, images: np.ndarray, labels: np.ndarray,
                     device: str = "cpu") -> float:  # fmt: skip
    """The share of ``images`` that the model ``state`` labels as ``labels`` (eval mode)."""
    model = models.build_model(model_name)
    models.load_state(model, state)
    model.to(device)
    with _threads(generator_threads()):
        logits = models.predict_logits(model, images)
    return float((logits.argmax(1).numpy() == labels).mean()) if len(labels) else 0.0


def train_on_synthetic(
    model_name: str,
    state: TensorDict,
    generator: Generator,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    settings: GenflConfig = GenflConfig(),
) -> TensorDict:
    """aigc-only: ``steps`` SGD steps of the model on the generator's samples alone.

    Labels are the ones the samples were made for (hard labels); BatchNorm learns its statistics
    from the synthetic data too, since the model sees no other.
    """
    spec = models.get_spec(model_name)
    model = models.build_model(model_name)
    models.load_state(model, state)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.server_learning_rate, momentum=settings.server_momentum,
        weight_decay=settings.server_weight_decay,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    with _threads(generator_threads()):
        for step in range(steps):
            labels = rng.integers(0, spec.num_classes, size=batch_size)
            images = generator.sample(labels, seed + step)
            loss = F.cross_entropy(model(models.to_float(images).to(device)), torch.from_numpy(labels).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return models.model_state(model.cpu())

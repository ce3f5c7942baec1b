"""GenFL strategies: FedAvg helped by server-side synthetic data, and the synthetic-only baseline.

``genfl`` (after "AIGC-assisted Federated Learning for Edge Intelligence",
arXiv 2503.20166): each round every picked device gets, with its task, a
synthetic batch that fills the classes it lacks (from its label counts) and
mixes it into local training with a weight that decays over rounds; the
server aggregates with FedAvg, then trains the generator on the round's
models and, when asked, distils their ensemble into the global model.

``aigc-only`` (the paper's baseline): the global model is trained on
synthetic data alone, on the server. Devices still train each round, but
only so that the data-free generator has teachers; their updates never
enter the global model (a ``local-pipeline`` generator needs none).

The generator is kept in memory across rounds; a restarted server starts a
fresh one (and sends no synthetic data until it has learned again).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

import models
from protocol import ConfigError, SyntheticBatch, TensorDict, TrainConfig, encode_synthetic

from ._aggregation import WeightedDeltaSum, apply_delta
from ._strategy import GenflConfig, Strategy, StrategyConfig, derive_seed
from ._tailor import synthetic_counts

__all__ = ["AigcOnly", "GenFL", "KeptUpdates"]


class KeptUpdates:
    """FedAvg's streaming sum, plus each device's delta: the generator learns from the devices' models."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._sum = WeightedDeltaSum(template)
        self.deltas: dict[str, Mapping[str, np.ndarray]] = {}

    @property
    def total_weight(self) -> int:
        return self._sum.total_weight

    @property
    def count(self) -> int:
        return self._sum.count

    def add(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None:
        self._sum.add(delta, weight, key)
        self.deltas[key if key is not None else f"#{self._sum.count:09d}"] = delta

    def mean(self) -> TensorDict:
        return self._sum.mean()


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--generator-device cuda asked for, but torch sees no CUDA device")
    return name


def synthetic_weight(config: GenflConfig, round_number: int) -> float:
    """The weight of the synthetic loss: ``synthetic_weight`` in the first synthetic round, then decaying."""
    first = config.warmup_rounds + 1
    return config.synthetic_weight * config.synthetic_decay ** max(0, round_number - first)


class _GenerativeStrategy(Strategy):
    """What both GenFL strategies share: the generator, its teachers and the round's figures."""

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config)
        self.generator: Any = None  # a _generator.Generator, built on first use (it imports torch)
        self.devices_seen: dict[str, tuple[int, np.ndarray | None]] = {}  # sample count, label counts
        self.generator_seconds = 0.0
        self.synthetic_bytes: dict[str, int] = {}
        self.last_fit: Any = None

    @property
    def genfl(self) -> GenflConfig:
        return self.config.genfl

    def proximal_mu(self) -> float:
        return 0.0

    def new_accumulator(self, template: TensorDict) -> KeptUpdates:  # type: ignore[override]
        return KeptUpdates(template)

    def round_stats(self) -> tuple[float, dict[str, int]]:
        return self.generator_seconds, dict(self.synthetic_bytes)

    def _spec(self) -> models.ModelSpec:
        if self.model_name is None:
            raise ConfigError("the strategy was not bound to a model")
        return models.get_spec(self.model_name)

    def _generator(self) -> Any:
        if self.generator is None:
            g = self.genfl
            spec = self._spec()
            device = _resolve_device(g.generator_device)
            if g.generator == "local-pipeline":
                from ._local_pipeline import LocalPipelineGenerator

                assert g.pipeline_path is not None
                self.generator = LocalPipelineGenerator(spec.name, g.pipeline_path, g.class_names, device=device)
            else:
                from ._generator import DataFreeGenerator, DataFreeSettings

                settings = DataFreeSettings(
                    steps=g.generator_steps, batch_size=g.generator_batch, distill_steps=g.distill_steps
                )
                self.generator = DataFreeGenerator(spec.name, settings, device=device, seed=self.config.seed)
        return self.generator

    def _note_devices(self, devices: Mapping[str, tuple[int, Any]]) -> None:
        self.generator_seconds, self.synthetic_bytes = 0.0, {}
        for device_id, (num_samples, counts) in devices.items():
            self.devices_seen[device_id] = (num_samples, None if counts is None else np.asarray(counts, np.float64))

    def _learn(self, global_state: TensorDict, new_state: TensorDict, updates: KeptUpdates) -> TensorDict:
        """Train the generator on this round's models; returns the (possibly distilled) new global model."""
        from ._generator import Teachers, class_weights

        keys = sorted(updates.deltas)
        if not keys:
            return new_state
        generator = self._generator()
        states = [apply_delta(global_state, updates.deltas[k]) for k in keys]
        counts = [self.devices_seen.get(k, (0, None))[1] for k in keys]
        weights = class_weights(counts, self._spec().num_classes)
        started = time.perf_counter()
        result, self.last_fit = generator.fit(Teachers(self._spec().name, states, weights, new_state))
        self.generator_seconds += time.perf_counter() - started
        return result  # type: ignore[no-any-return]

    def _tailored(self, round_number: int, device_ids: Sequence[str]) -> dict[str, bytes]:
        """Per device, a synthetic batch for the classes it lacks, within the byte budget."""
        generator = self._generator()
        g = self.genfl
        spec = self._spec()
        sample_bytes = int(np.prod(spec.input_shape)) + 8 + (2 * spec.num_classes if g.soft_labels else 0)
        max_samples = g.synthetic_budget_kb * 1024 // sample_bytes
        out: dict[str, bytes] = {}
        for device_id in device_ids:
            num_samples, counts = self.devices_seen.get(device_id, (0, None))
            per_class = synthetic_counts(counts, num_samples, spec.num_classes, share=g.synthetic_share,
                                         max_samples=max_samples)  # fmt: skip
            labels = np.repeat(np.arange(spec.num_classes, dtype=np.int64), per_class)
            if len(labels) == 0:
                continue
            images = generator.sample(labels, derive_seed("synthetic", self.config.seed, round_number, device_id))
            soft = generator.soft_labels(images, labels) if g.soft_labels else None
            batch = SyntheticBatch(images, labels, None if soft is None else soft.astype(np.float16))
            out[device_id] = encode_synthetic(batch)
            self.synthetic_bytes[device_id] = len(out[device_id])
        return out


class GenFL(_GenerativeStrategy):
    """FedAvg + tailored synthetic batches mixed into local training + optional server-side distillation."""

    name = "genfl"

    def synthetic_batches(
        self, round_number: int, configs: dict[str, TrainConfig], devices: Mapping[str, tuple[int, Any]]
    ) -> tuple[dict[str, TrainConfig], dict[str, bytes]]:
        self._note_devices(devices)
        g = self.genfl
        if round_number <= g.warmup_rounds or g.synthetic_weight == 0:
            return configs, {}
        if g.generator == "data-free" and (self.generator is None or not self.generator.ready):
            return configs, {}  # it learns from the first round's models before it has anything to say
        started = time.perf_counter()
        blobs = self._tailored(round_number, sorted(configs))
        self.generator_seconds += time.perf_counter() - started
        weight = synthetic_weight(g, round_number)
        return {d: replace(c, synthetic_weight=weight) if d in blobs else c for d, c in configs.items()}, blobs

    def aggregate_round(self, global_state: TensorDict, updates: Any) -> TensorDict:
        new_state = apply_delta(global_state, updates.mean())
        if self.genfl.generator != "data-free" or self.genfl.generator_steps == 0:
            return new_state
        return self._learn(global_state, new_state, updates)


class AigcOnly(_GenerativeStrategy):
    """The paper's baseline: the global model trained on synthetic data alone, on the server.

    The devices' updates only teach the data-free generator; they never enter the global model.
    """

    name = "aigc-only"

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config)
        self.server_rounds = 0

    def synthetic_batches(
        self, round_number: int, configs: dict[str, TrainConfig], devices: Mapping[str, tuple[int, Any]]
    ) -> tuple[dict[str, TrainConfig], dict[str, bytes]]:
        self._note_devices(devices)
        return configs, {}

    def aggregate_round(self, global_state: TensorDict, updates: Any) -> TensorDict:
        from ._generator import train_on_synthetic

        generator = self._generator()
        if self.genfl.generator == "data-free":
            # The teachers are the devices' models; BatchNorm statistics come from their mean.
            self._learn(global_state, apply_delta(global_state, updates.mean()), updates)
        if not generator.ready:
            return global_state
        started = time.perf_counter()
        self.server_rounds += 1
        seed = derive_seed("aigc-only", self.config.seed, self.server_rounds)
        g = self.genfl
        trained = train_on_synthetic(
            self._spec().name, global_state, generator, steps=g.server_steps, batch_size=g.generator_batch, seed=seed,
            device=_resolve_device(g.generator_device),
        )  # fmt: skip
        self.generator_seconds += time.perf_counter() - started
        return trained

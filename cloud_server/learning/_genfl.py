"""GenFL strategies: FedAvg helped by server-side synthetic data, and the synthetic-only baseline.

``genfl`` (after "AIGC-assisted Federated Learning for Edge Intelligence",
arXiv 2503.20166): each round the server makes one pool of synthetic images
per class, drops those the devices' ensemble does not label as asked, and
checks how well the current global model (trained on the devices' real data,
never on these images) recognises the rest. Every picked device gets, with
its task, a batch drawn from the pool for the classes it lacks (from its label
counts), mixed into local training at a few synthetic samples per real one,
with a weight that is the configured maximum times that check: near zero while
the images are noise to a model of real data, growing as they become
recognisable. So synthetic data is used as far as there is evidence it is
real-like, and no further. The server aggregates with FedAvg (or the robust
rule configured), then trains the generator on the round's models and, when
asked, distils their ensemble into the global model.

``aigc-only`` (the paper's baseline): the global model is trained on
synthetic data alone, on the server. Devices still train each round, but
only so that the data-free generator has teachers; their updates never
enter the global model (a ``local-pipeline`` generator needs none).

The generator is kept in memory across rounds; a restarted server starts a
fresh one (and sends no synthetic data until it has learned again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

import models
from protocol import ConfigError, GenflError, SyntheticBatch, TensorDict, encode_synthetic

from ._aggregation import WeightedDeltaSum, apply_delta
from ._curation import CurationConfig, PoolVerdicts, held_classes, pick_probes
from ._genfl_config import GenflConfig
from ._strategy import (
    Accumulator,
    Configs,
    Devices,
    RoundPlan,
    RoundResults,
    Strategy,
    StrategyConfig,
    derive_seed,
)
from ._tailor import synthetic_counts

__all__ = ["AigcOnly", "GenFL", "HarmCheck", "KeptUpdates", "SyntheticPool", "SyntheticReport", "synthetic_weight"]

log = logging.getLogger("genfl.server")

_INFORMATIVE = 0.05  # a model this far above chance on the devices' data (or the pool) says something of the pool


class KeptUpdates:
    """The strategy's own accumulator (FedAvg's streaming sum or a robust rule's buffer), plus each device's
    delta: the generator learns from the devices' models."""

    def __init__(self, template: Mapping[str, np.ndarray], inner: Accumulator | None = None) -> None:
        self._inner = inner if inner is not None else WeightedDeltaSum(template)
        self.deltas: dict[str, Mapping[str, np.ndarray]] = {}

    @property
    def total_weight(self) -> int:
        return self._inner.total_weight

    @property
    def count(self) -> int:
        return self._inner.count

    def add(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None:
        self._inner.add(delta, weight, key)
        self.deltas[key if key is not None else f"#{self._inner.count:09d}"] = delta

    def remove(self, delta: Mapping[str, np.ndarray], weight: int, key: str | None = None) -> None:
        self._inner.remove(delta, weight, key)
        if key is not None:
            self.deltas.pop(key, None)

    def mean(self) -> TensorDict:
        return self._inner.mean()

    def add_noise(self, noise: Mapping[str, np.ndarray]) -> None:
        self._inner.add_noise(noise)


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--generator-device cuda asked for, but torch sees no CUDA device")
    return name


def synthetic_weight(config: GenflConfig, round_number: int, evidence: float = 1.0) -> float:
    """The weight of the synthetic loss: the largest weight times the share the evidence earns, times
    ``synthetic_decay`` per round after the first synthetic one."""
    first = config.warmup + 1
    return config.max_weight * evidence * config.synthetic_decay ** max(0, round_number - first)


class HarmCheck:
    """Halves the synthetic weight after a synthetic round that did the devices' own data harm, doubles it back
    (up to the full weight) after one that did none.

    The evidence is federated evaluation: every device reports how the model it received scores on its own data
    before training, so what the devices measure at round r+1 against round r is the effect of round r's
    training on data the server never saw. A round's effect is known one round later.
    """

    def __init__(self, tolerance: float) -> None:
        self.value = 1.0
        self.tolerance = tolerance
        self.evaluations: dict[int, float] = {}  # round -> devices' accuracy of the model it started from
        self.pending: list[int] = []  # synthetic rounds not judged yet
        self.judged: list[tuple[int, float, float]] = []  # (round, accuracy change, value after)

    def evaluated(self, round_number: int, accuracy: float | None) -> None:
        if accuracy is not None:
            self.evaluations[round_number] = accuracy

    def used(self, round_number: int) -> None:
        self.pending.append(round_number)

    def update(self) -> float:
        """Judge every synthetic round whose effect is known now; the share of the weight for the next one."""
        for round_number in list(self.pending):
            before, after = self.evaluations.get(round_number), self.evaluations.get(round_number + 1)
            if after is None:
                continue
            self.pending.remove(round_number)
            if before is None:
                continue
            change = after - before
            self.value = min(1.0, self.value * 2.0) if change >= -self.tolerance else self.value / 2.0
            self.judged.append((round_number, change, self.value))
        return self.value


@dataclass(frozen=True)
class SyntheticReport:
    """What one round sent of synthetic data, or why it sent none: the operator's view of GenFL."""

    round: int
    source: str  # data-free, local-pipeline, or pool PATH
    sent: bool
    why_not: str  # when nothing was sent: why the round ran as plain FedAvg
    devices: int  # devices that got a batch
    images: int  # synthetic images sent (probes not counted), all devices together
    bytes: int
    weight: float  # the synthetic loss weight the devices were told
    harm_check: float  # the harm check's share of the weight (1: no harm seen)
    teachers_gate: float | None  # data-free: how well the teachers fit their data (None: no gate)
    recognised: float | None  # share of the images (pool: of the pool) the current global model labels as they claim
    pool_held: dict[str, int] | None  # pool: images per class
    pool_quality: float | None  # pool: recognised share of the pool over that of the devices' data (0..1)
    fleet_agreement: float | None  # pool with probes: the devices' mean verdict on the images they judged lately
    made: int | None  # images made before any filter

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One log line."""
        if not self.sent:
            return f"round {self.round}: plain FedAvg, no synthetic data: {self.why_not}"
        held = ""
        if self.pool_held is not None:
            sizes = sorted(set(self.pool_held.values()))
            each = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
            held = f" ({sum(self.pool_held.values())} images, {each} per class)"
        verdict = "" if self.pool_quality is None else f", pool quality {self.pool_quality:.2f}"
        if self.fleet_agreement is not None:
            verdict += f", the devices' verdict {self.fleet_agreement:.2f}"
        recognised = "" if self.recognised is None else f", recognised by the global model {self.recognised:.2f}"
        gate = "" if self.teachers_gate is None else f", teachers fit their data {self.teachers_gate:.3f}"
        return (
            f"round {self.round}: synthetic data from {self.source}{held}: {self.images} images "
            f"({self.bytes / 1024:.0f} KiB) to {self.devices} devices, weight {self.weight:.3f} "
            f"(harm check {self.harm_check:.2f}{gate}){verdict}{recognised}"
        )


@dataclass(frozen=True)
class SyntheticPool:
    """One round's synthetic images per class, checked; every device's batch is drawn from it."""

    images: np.ndarray  # uint8 (N, C, H, W), only those the ensemble labels as asked
    labels: np.ndarray  # int64 (N,)
    soft_labels: np.ndarray | None  # float32 (N, classes)
    made: int  # images generated before the filter
    recognised: float  # share of the kept images the current global model labels as asked (reported only)

    def draw(self, per_class: np.ndarray, seed: int) -> SyntheticBatch | None:
        """``per_class[c]`` images of each class c (with replacement where the pool holds fewer)."""
        rng = np.random.default_rng(seed)
        picked = []
        for label, count in enumerate(per_class):
            members = np.flatnonzero(self.labels == label)
            if count > 0 and len(members) > 0:
                picked.append(rng.choice(members, size=int(count), replace=len(members) < count))
        if not picked:
            return None
        index = np.concatenate(picked)
        soft = None if self.soft_labels is None else self.soft_labels[index].astype(np.float16)
        return SyntheticBatch(self.images[index], self.labels[index], soft)


class _GenerativeStrategy(Strategy):
    """What both GenFL strategies share: the generator, its teachers and the round's figures."""

    def __init__(self, config: StrategyConfig, *, model_name: str | None = None, classes: tuple[str, ...] = ()) -> None:
        super().__init__(config, model_name=model_name, classes=classes)
        self.generator: Any = None  # a _generator.Generator, built on first use (it imports torch)
        self.devices_seen: dict[str, tuple[int, np.ndarray | None]] = {}  # sample count, label counts
        self.generator_seconds: dict[int, float] = {}  # round -> server seconds spent generating and learning
        self.synthetic_bytes: dict[str, int] = {}
        self.synthetic_images: dict[str, int] = {}  # device -> synthetic images sent this round
        self.last_pool: SyntheticPool | None = None
        self.current_global: TensorDict | None = None  # the model the round being planned starts from
        self.harm = HarmCheck(config.genfl.harm_tolerance)
        self.teacher_accuracy: dict[int, float] = {}  # round -> how well its devices' models fit their own data
        self.verdicts = PoolVerdicts()  # pool: what the fleet says of each image
        self.reports: dict[int, SyntheticReport] = {}  # round -> what it sent of synthetic data
        self.pool_recognised: dict[int, float] = {}  # round -> share of the pool the model sent in it recognises
        self._restored_quality: float | None = None  # the pool quality a restarted server's state reported last
        self.pool_scores: dict[str, float] = {}  # pool image name -> the global model's last score of it
        # (round, device) -> the probes it was sent (names, labels)
        self.probes_sent: dict[tuple[int, str], tuple[list[str], np.ndarray]] = {}

    def aggregate_evaluate(self, results: RoundResults) -> dict[str, Any]:
        """The round's evaluation, and what it tells the next rounds: the harm check learns from the devices'
        accuracy of the model they received, the teachers gate from how well their models fit, the pool's
        curation from their verdicts on the probes."""
        metrics = super().aggregate_evaluate(results)
        number = results.round_number
        self.harm.evaluated(number, metrics["device_accuracy"])
        if metrics["teacher_accuracy"] is not None:
            self.teacher_accuracy[number] = metrics["teacher_accuracy"]
        for device_id, fit in sorted(results.fits.items()):
            self._record_verdicts(number, device_id, fit.probe_scores)
        return metrics

    def _record_verdicts(self, round_number: int, device_id: str, scores: tuple[int, ...] | None) -> None:
        """A device's verdicts on the probes it was sent (ignored, with a warning, if they do not fit)."""
        sent = self.probes_sent.get((round_number, device_id))
        if scores is None or sent is None:
            return
        names, labels = sent
        if len(scores) != len(names):
            log.warning("round %d: %s returned %d probe scores for %d probes; ignored", round_number, device_id,
                        len(scores), len(names))  # fmt: skip
            return
        self.verdicts.record(round_number, names, labels.tolist(), scores)

    def teachers_fit(self, round_number: int) -> bool:
        """Whether the models the generator learned from (the round before) fit their own data well enough."""
        return self._gate_open(self.teacher_accuracy.get(round_number - 1))

    def _gate_open(self, teacher_accuracy: float | None) -> bool:
        if self.genfl.teacher_gate == 0.0 or self.genfl.generator != "data-free":
            return True  # no gate, or a generator whose labels are its prompts, not the devices' models
        return teacher_accuracy is not None and teacher_accuracy >= self.genfl.teacher_gate

    @property
    def genfl(self) -> GenflConfig:
        return self.config.genfl

    def proximal_mu(self) -> float:
        return 0.0

    def new_accumulator(self, template: TensorDict) -> KeptUpdates:
        return KeptUpdates(template, super().new_accumulator(template))

    def _spent(self, round_number: int, started: float) -> None:
        """Count the server seconds since ``started`` to round ``round_number``."""
        self.generator_seconds[round_number] = self.generator_seconds.get(round_number, 0.0) + (
            time.perf_counter() - started
        )

    def _spec(self) -> models.ModelSpec:
        if self.model_name is None:
            raise ConfigError("the strategy was not bound to a model")
        return models.get_spec(self.model_name)

    def _generator(self) -> Any:
        if self.generator is None:
            g = self.genfl
            spec = self._spec()
            device = _resolve_device(g.generator_device)
            if g.generator == "pool":
                from ._pool import PoolGenerator

                assert g.synthetic_pool is not None
                self.generator = PoolGenerator(spec.name, g.synthetic_pool, self.classes)
                if self.generator.lacking():
                    log.warning("synthetic pool %s holds no images of %s: no device gets synthetic data of them",
                                g.synthetic_pool, ", ".join(self.generator.lacking()))  # fmt: skip
            elif g.generator == "local-pipeline":
                from ._local_pipeline import LocalPipelineGenerator

                assert g.pipeline_path is not None
                self.generator = LocalPipelineGenerator(spec.name, g.pipeline_path, self.classes, device=device)
            else:
                from ._generator import DataFreeGenerator

                self.generator = DataFreeGenerator(spec.name, g, device=device, seed=self.config.seed)
        return self.generator

    def configure_synthetic(
        self, round_number: int, global_state: TensorDict, configs: Configs, devices: Devices
    ) -> RoundPlan:
        self._note_devices(round_number, global_state, devices)
        return self._plan(round_number, configs)

    def _plan(self, round_number: int, configs: Configs) -> RoundPlan:
        """The round's synthetic batches for the picked devices (aigc-only sends none: it trains on the server)."""
        del round_number
        return RoundPlan(configs)

    def _note_devices(self, round_number: int, global_state: TensorDict, devices: Devices) -> None:
        """What planning round ``round_number`` starts from: the global model (from the second round: the first
        starts from an untrained one, which says nothing of a pool) and the picked devices."""
        self.current_global = global_state if round_number > 1 else None
        self.synthetic_bytes, self.synthetic_images = {}, {}
        # earlier rounds are closed (their fit and evaluation ran): a server that runs for months keeps one round
        self.probes_sent = {key: sent for key, sent in self.probes_sent.items() if key[0] >= round_number}
        self.generator_seconds = {r: s for r, s in self.generator_seconds.items() if r >= round_number}
        for device_id, info in devices.items():
            counts = None if info.label_counts is None else np.asarray(info.label_counts, np.float64)
            self.devices_seen[device_id] = (info.num_samples, counts)

    def _learn(self, global_state: TensorDict, new_state: TensorDict, results: RoundResults) -> TensorDict:
        """Train the generator on this round's models; returns the (possibly distilled) new global model."""
        from ._generator import Teachers, class_weights

        updates = results.updates
        assert isinstance(updates, KeptUpdates)
        keys = sorted(updates.deltas)
        if not keys:
            return new_state
        generator = self._generator()
        states = [apply_delta(global_state, updates.deltas[k]) for k in keys]
        counts = [self._label_counts(results, k) for k in keys]
        weights = class_weights(counts, self._spec().num_classes)
        started = time.perf_counter()
        result, _ = generator.fit(Teachers(self._spec().name, states, weights, new_state))
        self._spent(results.round_number, started)
        return result  # type: ignore[no-any-return]

    def _label_counts(self, results: RoundResults, device_id: str) -> np.ndarray | None:
        fit = results.fits.get(device_id)
        if fit is not None and fit.label_counts is not None:
            return np.asarray(fit.label_counts, np.float64)
        return self.devices_seen.get(device_id, (0, None))[1]

    def _budget_samples(self) -> int:
        """Synthetic samples (images, labels, soft labels) one device's byte budget holds."""
        g = self.genfl
        spec = self._spec()
        sample_bytes = int(np.prod(spec.input_shape)) + 8 + (2 * spec.num_classes if g.soft_labels else 0)
        return g.synthetic_budget_kb * 1024 // sample_bytes

    def _probe_count(self) -> int:
        """Probes per device: as configured, within the byte budget."""
        return min(self.genfl.pool_probes, self._budget_samples())

    def _needs(self, device_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Per device, how many synthetic images of each class it gets (its lacking classes, within budget)."""
        g = self.genfl
        spec = self._spec()
        max_samples = self._budget_samples()
        if g.generator == "pool":  # the probes a device judges come out of the same budget
            max_samples -= self._probe_count()
        needs = {}
        for device_id in device_ids:
            num_samples, counts = self.devices_seen.get(device_id, (0, None))
            needs[device_id] = synthetic_counts(
                counts, num_samples, spec.num_classes, share=g.synthetic_share, max_samples=max_samples,
                every_class=g.synthetic_every_class,
            )  # fmt: skip
        return needs

    def _pool(self, round_number: int, per_class: np.ndarray) -> SyntheticPool:
        """Make ``per_class`` images of each class, keep those the ensemble labels as asked, check the rest."""
        from ._generator import recognised_share

        generator = self._generator()
        g = self.genfl
        spec = self._spec()
        labels = np.repeat(np.arange(spec.num_classes, dtype=np.int64), per_class)
        images = generator.sample(labels, derive_seed("synthetic-pool", self.config.seed, round_number))
        probabilities = generator.soft_labels(images, labels)
        keep = np.ones(len(labels), dtype=bool)
        if g.filter_disagreeing and probabilities is not None:
            keep = probabilities.argmax(1) == labels
        images, labels = images[keep], labels[keep]
        soft = probabilities[keep] if (g.soft_labels and probabilities is not None) else None
        recognised = float("nan")
        if self.current_global is not None and len(labels):
            recognised = recognised_share(spec.name, self.current_global, images, labels, generator.device)
        return SyntheticPool(images, labels, soft, len(keep), recognised)

    def _tailored(self, round_number: int, device_ids: Sequence[str]) -> dict[str, bytes]:
        """Per device, a batch from the round's pool for the classes it lacks, within the byte budget."""
        if self.genfl.generator == "pool":
            return self._from_pool(round_number, self._needs(device_ids))
        needs = {d: n for d, n in self._needs(device_ids).items() if n.sum() > 0}
        if not needs:
            return {}
        pool = self.last_pool = self._pool(round_number, np.max(np.stack(list(needs.values())), axis=0))

        out: dict[str, bytes] = {}
        for device_id, per_class in needs.items():
            batch = pool.draw(per_class, derive_seed("synthetic", self.config.seed, round_number, device_id))
            if batch is not None:
                out[device_id] = encode_synthetic(batch)
                self.synthetic_bytes[device_id] = len(out[device_id])
                self.synthetic_images[device_id] = len(batch)
        return out

    def _from_pool(self, round_number: int, needs: Mapping[str, np.ndarray]) -> dict[str, bytes]:
        """Per device, distinct images of the pool's classes it lacks (a device's batch is drawn from the whole
        pool, the fleet's model deciding how often each image is drawn), and probes of the classes it holds."""
        generator = self._generator()
        try:
            generator.refresh()  # grown or refreshed since the last round: score and draw from what it holds now
        except GenflError as exc:  # an image being copied in, say: the pool as it was read last
            log.warning("round %d: keeping the pool as last read: %s", round_number, exc)
        g = self.genfl
        curation = CurationConfig(probes=self._probe_count(), sharpness=g.pool_sharpness)
        weights = None
        scores = self._score_pool(round_number)
        if scores is not None and g.pool_sharpness > 0:
            weights = {label: np.maximum(p, 1e-4) ** g.pool_sharpness for label, p in scores.items()}
        if curation.probes > 0:  # and the devices' own verdicts, where they gave some
            means = self.verdicts.class_means(self._spec().num_classes)
            for label, names in generator.pool.names.items():
                verdict = self.verdicts.weights(names, means[label], curation)
                weights = weights or {}
                weights[label] = verdict * weights.get(label, 1.0)
        out: dict[str, bytes] = {}
        sent_images, sent_labels = [], []
        for device_id, per_class in needs.items():
            seed = derive_seed("synthetic", self.config.seed, round_number, device_id)
            images, labels, _ = generator.draw(per_class, seed, weights)
            probe_images = probe_labels = None
            counts = self.devices_seen.get(device_id, (0, None))[1]
            held = held_classes(counts, curation.held_share)
            probes = pick_probes(held, generator.pool.names, self.verdicts.votes, curation.probes,
                                 np.random.default_rng(derive_seed("probes", seed)))  # fmt: skip
            if probes:
                probe_images = np.stack([generator.pool.images[c][i] for c, i in probes])
                probe_labels = np.array([c for c, _ in probes], dtype=np.int64)
                names = [generator.pool.names[c][i] for c, i in probes]
                self.probes_sent[(round_number, device_id)] = (names, probe_labels)
            if len(labels) or probes:
                out[device_id] = encode_synthetic(SyntheticBatch(images, labels, None, probe_images, probe_labels))
                self.synthetic_bytes[device_id] = len(out[device_id])
                self.synthetic_images[device_id] = len(labels)
                sent_images.append(images)
                sent_labels.append(labels)
        images = np.concatenate(sent_images) if sent_images else np.zeros((0, *self._spec().input_shape), np.uint8)
        labels = np.concatenate(sent_labels) if sent_labels else np.zeros(0, np.int64)
        recognised = self.pool_recognised.get(round_number, float("nan"))  # of the pool, by the current model
        self.last_pool = SyntheticPool(images, labels, None, len(labels), recognised)
        return out

    def _score_pool(self, round_number: int) -> dict[int, np.ndarray] | None:
        """The current global model's probability of each pool image's class (None before there is one), and
        the share of the pool it recognises (kept per round: the pool's side of its quality).

        A round scores at most ``pool_scored_per_round`` images (at least one of each class), drawn anew each
        round, so that a large pool costs a bounded time on a CPU; an image keeps its last score (by name, so a
        pool that grows keeps what it knew), and one never scored counts as its class's median (as chance while
        none of its class was: a diverged model's scores are not kept).
        """
        g = self.genfl
        if self.current_global is None or not (g.pool_sharpness > 0 or g.pool_evidence):
            return None
        import torch

        pool = self._generator().pool
        model = models.build_model(self._spec().name)
        models.load_state(model, self.current_global)
        total = sum(len(images) for images in pool.images.values())
        share = min(1.0, g.pool_scored_per_round / max(total, 1))
        rng = np.random.default_rng(derive_seed("pool-scores", self.config.seed, round_number))
        scores, right, judged = {}, 0, 0
        num_classes = self._spec().num_classes  # (an image no model scored yet counts as chance)
        for label, images in pool.images.items():
            names = pool.names[label]
            picked = rng.random(len(images)) < share
            picked[rng.integers(len(images))] = True  # every class is judged every round
            probabilities = torch.softmax(models.predict_logits(model, images[picked]), dim=1)
            finite = torch.isfinite(probabilities).all(dim=1)  # a diverged model's NaN says nothing of an image
            for name, score, ok in zip((n for n, p in zip(names, picked) if p), probabilities[:, label].tolist(),
                                       finite.tolist()):  # fmt: skip
                if ok:
                    self.pool_scores[name] = score
            row = np.array([self.pool_scores.get(name, np.nan) for name in names], dtype=np.float64)
            known = row[~np.isnan(row)]
            scores[label] = np.where(np.isnan(row), float(np.median(known)) if len(known) else 1.0 / num_classes, row)
            right += int((probabilities.argmax(1) == label)[finite].sum())
            judged += int(picked.sum())
        self.pool_recognised[round_number] = right / max(judged, 1)
        return scores

    def pool_quality(self, round_number: int) -> float | None:
        """The pool's quality before round ``round_number``, in [0, 1]: for the last model both sides scored, the
        share of the pool it recognises over the share of the devices' own data it recognises (their reports),
        both above chance; None while that model recognises neither better than chance (no evidence yet)."""
        chance = 1.0 / len(self.classes) if self.classes else 0.1
        for earlier in range(round_number - 1, 0, -1):
            pool, fleet = self.pool_recognised.get(earlier), self.harm.evaluations.get(earlier)
            if pool is None or fleet is None:
                continue
            if fleet - chance < _INFORMATIVE and pool - chance < _INFORMATIVE:
                return None
            return float(np.clip((pool - chance) / max(fleet - chance, _INFORMATIVE), 0.0, 1.0))
        return self._restored_quality  # before a restarted server measured anything: what it had measured

    def restore(self, history: Sequence[Mapping[str, Any]]) -> None:
        """A restarted server keeps the last pool quality its rounds reported until new evidence comes in (else
        a pool judged worthless would get the full weight again for a round)."""
        for metrics in reversed(history):
            quality = metrics.get("pool_quality")
            if isinstance(quality, (int, float)) and not isinstance(quality, bool) and 0.0 <= quality <= 1.0:
                self._restored_quality = float(quality)
                return


class GenFL(_GenerativeStrategy):
    """FedAvg + tailored synthetic batches mixed into local training + optional server-side distillation."""

    name = "genfl"

    def _plan(self, round_number: int, configs: Configs) -> RoundPlan:
        g = self.genfl
        why_not = self._why_no_synthetic(round_number)
        if why_not is not None:
            return RoundPlan(configs, metrics=self._report(round_number, why_not))
        started = time.perf_counter()
        blobs = self._tailored(round_number, sorted(configs))
        self._spent(round_number, started)
        weight = self._weight(round_number)
        if not blobs or weight == 0.0:
            why_not = ("no picked device lacks a class the generator can make" if not blobs
                       else "the evidence leaves the synthetic weight at 0")  # fmt: skip
            return RoundPlan(configs, metrics=self._report(round_number, why_not, weight=weight))
        self.harm.used(round_number)
        metrics = self._report(round_number, None, weight=weight, blobs=blobs)
        configured = {d: replace(c, synthetic_weight=weight, synthetic_ratio=g.synthetic_ratio,
                                 synthetic_norm=g.synthetic_norm, synthetic_restyle=g.restyle)
                      if d in blobs else c
                      for d, c in configs.items()}  # fmt: skip
        return RoundPlan(configured, blobs, metrics)

    def _why_no_synthetic(self, round_number: int) -> str | None:
        """Why round ``round_number`` runs as plain FedAvg, or None if it gets synthetic data."""
        g = self.genfl
        if g.max_weight == 0:
            return "the synthetic weight is 0"
        if round_number <= g.warmup:
            return f"warm-up round ({g.warmup} of plain FedAvg first)"
        if g.generator == "data-free" and (self.generator is None or not self.generator.ready):
            return "the data-free generator has not learned from a round's models yet"
        if not self.teachers_fit(round_number):
            fit = self.teacher_accuracy.get(round_number - 1, float("nan"))
            return f"the teachers gate is closed: the devices' models fit their data {fit:.3f} < {g.teacher_gate:.2f}"
        return None

    def _weight(self, round_number: int) -> float:
        """The synthetic weight of this round's batches, as the evidence allows: the harm check, and for a pool
        its quality (while there is no evidence yet, the configured weight)."""
        weight = synthetic_weight(self.genfl, round_number, self.harm.update())
        if self.genfl.generator == "pool" and self.genfl.pool_evidence:
            quality = self.pool_quality(round_number)
            weight *= 1.0 if quality is None else quality
        return weight

    def _report(self, round_number: int, why_not: str | None, *, weight: float = 0.0,
                blobs: Mapping[str, bytes] | None = None) -> dict[str, Any]:  # fmt: skip
        """What this round sent of synthetic data, or why it sent none (kept, logged in one line, and returned
        as the round's metrics with the server seconds it took)."""
        g = self.genfl
        pool = self.last_pool if why_not is None else None
        gated = g.generator == "data-free" and g.teacher_gate > 0.0
        gate = self.teacher_accuracy.get(round_number - 1) if gated else None
        report = SyntheticReport(
            round=round_number,
            source=g.generator if g.generator != "pool" else f"pool {g.synthetic_pool}",
            sent=why_not is None,
            why_not=why_not or "",
            devices=len(blobs or {}),
            images=sum(self.synthetic_images.get(d, 0) for d in blobs or {}),
            bytes=sum(len(b) for b in (blobs or {}).values()),
            weight=weight,
            harm_check=self.harm.value,
            teachers_gate=gate,
            recognised=None if pool is None or not np.isfinite(pool.recognised) else pool.recognised,
            pool_held=self._pool_held(),
            pool_quality=self.pool_quality(round_number) if g.generator == "pool" else None,
            fleet_agreement=self.verdicts.agreement(round_number - 3) if g.pool_probes else None,
            made=None if pool is None else pool.made,
        )
        self.reports[round_number] = report
        log.info("%s", report.line())
        return {**report.to_json(), "generator_s": self.generator_seconds.get(round_number, 0.0)}

    def _pool_held(self) -> dict[str, int] | None:
        if self.genfl.generator != "pool" or self.generator is None:
            return None
        return {self.classes[c]: n for c, n in sorted(self.generator.held.items())}

    def aggregate_fit(self, global_state: TensorDict, results: RoundResults) -> tuple[TensorDict, dict[str, Any]]:
        new_state, _ = super().aggregate_fit(global_state, results)  # FedAvg, or the robust rule configured
        # The generator learns only from teachers that fit their own data: from the others it would learn
        # guesses (and the next round sends nothing anyway), so a closed gate also costs no generator time.
        learn = self._gate_open(results.mean_of("train_accuracy"))
        if self.genfl.generator == "data-free" and self.genfl.generator_steps > 0 and learn:
            new_state = self._learn(global_state, new_state, results)
        return new_state, {"generator_s": self.generator_seconds.get(results.round_number, 0.0)}


class AigcOnly(_GenerativeStrategy):
    """The paper's baseline: the global model trained on synthetic data alone, on the server.

    The devices' updates only teach the data-free generator; they never enter the global model.
    """

    name = "aigc-only"

    def __init__(self, config: StrategyConfig, *, model_name: str | None = None, classes: tuple[str, ...] = ()) -> None:
        super().__init__(config, model_name=model_name, classes=classes)
        self.server_rounds = 0

    def aggregate_fit(self, global_state: TensorDict, results: RoundResults) -> tuple[TensorDict, dict[str, Any]]:
        from ._generator import train_on_synthetic

        generator = self._generator()
        if self.genfl.generator == "data-free":
            # The teachers are the devices' models; BatchNorm statistics come from their mean.
            self._learn(global_state, apply_delta(global_state, results.updates.mean()), results)
        if not generator.ready:
            return global_state, {"generator_s": self.generator_seconds.get(results.round_number, 0.0)}
        started = time.perf_counter()
        self.server_rounds += 1
        seed = derive_seed("aigc-only", self.config.seed, self.server_rounds)
        g = self.genfl
        trained = train_on_synthetic(
            self._spec().name, global_state, generator, steps=g.server_steps, batch_size=g.generator_batch, seed=seed,
            device=_resolve_device(g.generator_device), settings=g,
        )  # fmt: skip
        self._spent(results.round_number, started)
        return trained, {"generator_s": self.generator_seconds[results.round_number]}

"""The GenFL strategies' settings (``--generator``, ``--synthetic-*`` ... on the command line): a module of their
own, so that the strategy base and the GenFL strategies both read them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from protocol import (
    MAX_PROBES,
    SYNTHETIC_NORMS,
    SYNTHETIC_RESTYLES,
    ConfigError,
    SyntheticNorm,
    SyntheticRestyle,
    TrainConfig,
    setting,
)

__all__ = ["GENERATORS", "GENERATOR_ADAM_BETAS", "GeneratorKind", "GenflConfig"]

GENERATOR_ADAM_BETAS = (0.5, 0.999)  # the data-free generator's Adam (DCGAN's choice: a short first-moment memory)


class GeneratorKind(str, Enum):
    DATA_FREE = "data-free"
    LOCAL_PIPELINE = "local-pipeline"
    POOL = "pool"


GENERATORS = tuple(g.value for g in GeneratorKind)


@dataclass(frozen=True)
class GenflConfig:
    """Settings of the GenFL strategies (``--generator``, ``--synthetic-*`` ... on the command line)."""

    generator: str = setting("data-free", "GenFL: where synthetic images come from.", choices=GeneratorKind)
    pipeline_path: str | None = setting(None, "local-pipeline: folder of a saved diffusers pipeline (read offline).")
    synthetic_pool: str | None = setting(
        None, "GenFL: draw synthetic images from this pool folder (POOL/<class>/<image>; generate-pool)."
    )
    warmup_rounds: int | None = setting(
        None, "GenFL: rounds of plain FedAvg before synthetic data (default: 1 data-free, 0 pool/pipeline)."
    )
    generator_steps: int = setting(40, "GenFL: data-free generator updates per round.")
    generator_batch: int = setting(128, "GenFL: images per data-free generator update (and aigc-only step).")
    generator_learning_rate: float = setting(1e-3, "GenFL data-free: the generator's Adam learning rate.")
    generator_z_dim: int = setting(64, "GenFL data-free: the generator's noise dimensions.")
    generator_width: int = setting(32, "GenFL data-free: the generator's channels (its size).")
    generator_bn_weight: float = setting(1.0, "GenFL data-free: weight of matching the teachers' BatchNorm.")
    generator_diversity_weight: float = setting(1.0, "GenFL data-free: weight of the mode-seeking term.")
    generator_adversarial_weight: float = setting(
        0.5, "GenFL data-free: weight of seeking where the student and the teachers disagree."
    )
    distill_steps: int = setting(0, "genfl: server-side distillation steps per round (0: off).")
    distill_learning_rate: float = setting(0.01, "genfl: the server's SGD learning rate of distillation.")
    distill_temperature: float = setting(1.0, "GenFL data-free: temperature of the adversarial term and distillation.")
    server_steps: int = setting(100, "aigc-only: server training steps on synthetic data per round.")
    server_learning_rate: float = setting(0.05, "aigc-only: the server's SGD learning rate.")
    server_momentum: float = setting(0.9, "aigc-only and distillation: the server's SGD momentum.")
    server_weight_decay: float = setting(5e-4, "aigc-only: the server's SGD weight decay.")
    synthetic_share: float = setting(1.0, "GenFL: fill lacking classes up to this share of balanced.")
    synthetic_budget_kb: int = setting(1024, "GenFL: KiB per device and round.")
    # The weight of the synthetic loss on the devices: `synthetic_weight`, when the evidence allows it:
    # - the teachers gate: the generator learns its labels from the devices' models, so synthetic data is sent
    #   only after a round whose models fit their own real data to at least `teacher_gate` (weighted training
    #   accuracy the devices report); below it the labels are guesses, and every device trains as with FedAvg;
    # - the harm check: a synthetic round after which the devices' accuracy of the model they received fell by
    #   more than `harm_tolerance` halves the weight; one that did no harm restores it (doubling).
    # None: 0.3 for the data-free generator (its images carry the teachers' guesses), 1.0 for a pool or a pipeline
    # (images of real quality may earn as much as real data; the pool's quality moves it below that).
    synthetic_weight: float | None = setting(
        None, "GenFL: the largest weight of the synthetic loss (default: 0.3 data-free, 1.0 pool/pipeline)."
    )
    synthetic_decay: float = setting(1.0, "GenFL: the weight is multiplied by this each round.")
    teacher_gate: float = setting(
        0.9, "GenFL: send synthetic data only after devices' models fit their data this well."
    )
    harm_tolerance: float = setting(
        0.02, "GenFL: a synthetic round that cost the devices more accuracy than this halves the weight."
    )
    filter_disagreeing: bool = setting(True, "GenFL: drop generated images the ensemble does not label as asked.")
    synthetic_ratio: float = setting(1.0, "GenFL: synthetic samples per real sample in each local batch.")
    synthetic_norm: str = setting(
        TrainConfig.synthetic_norm,
        "GenFL: synthetic samples through BatchNorm with the real ones, or frozen.",
        choices=SyntheticNorm,
    )
    # How devices bridge a style gap (protocol.SyntheticRestyle).
    synthetic_restyle: str | None = setting(
        None,
        "GenFL: bridge a style gap on the devices: none, synthetic (to their colours), real (half of theirs to the "
        "synthetic images' colours), auto (real where the colours differ). Default: real for a pool or pipeline, "
        "none data-free.",
        choices=SyntheticRestyle,
    )
    # A pool is judged by the model the fleet trained on its own data: each round the current global model scores
    # every pool image (its probability of the class the image claims); images are drawn in proportion to that
    # score ** pool_sharpness (0: uniformly), and the synthetic weight follows the pool's quality, the share of
    # its images that model recognises over the share of the devices' own data it recognises (their reports).
    pool_sharpness: float = setting(2.0, "GenFL pool: draw images in proportion to their score to this power.")
    pool_evidence: bool = setting(True, "GenFL pool: the synthetic weight follows the pool's measured quality.")
    pool_scored_per_round: int = setting(2048, "GenFL pool: images the global model scores per round (in turns).")
    pool_probes: int = setting(
        0, "GenFL pool: images of its own classes each device judges per round (0: no curation)."
    )
    synthetic_every_class: float = setting(
        0.0, "GenFL: every class, held ones too, gets at least this share of the target."
    )
    soft_labels: bool = setting(False, "GenFL: ensemble probabilities.", flag="--soft-labels/--hard-labels")
    soft_temperature: float = setting(1.0, "GenFL: temperature of the soft labels.")
    bn_per_teacher: bool = setting(False, "GenFL data-free: match each teacher's BatchNorm statistics.")
    train_mode_sampling: bool = setting(True, "GenFL data-free: sample as optimised (batch statistics).")
    replay: int = setting(0, "GenFL data-free: keep this many images of earlier rounds for distillation.")
    generator_device: str = setting("auto", "GenFL generator device: auto, cpu or cuda.")

    def __post_init__(self) -> None:
        if self.synthetic_pool is not None and self.generator == GeneratorKind.DATA_FREE.value:
            object.__setattr__(self, "generator", GeneratorKind.POOL.value)  # --synthetic-pool alone names a pool
        if self.generator not in GENERATORS:
            raise ConfigError(f"unknown generator {self.generator!r}; use one of {', '.join(GENERATORS)}")
        if self.generator == "local-pipeline" and not self.pipeline_path:
            raise ConfigError("the local-pipeline generator needs --pipeline-path (a saved diffusers pipeline)")
        if (self.generator == "pool") != (self.synthetic_pool is not None):
            raise ConfigError("--synthetic-pool POOL is the pool generator's, and it needs one")
        if (self.warmup_rounds or 0) < 0 or self.generator_steps < 0 or self.distill_steps < 0 or self.server_steps < 0:
            raise ConfigError("warm-up rounds and step counts must be >= 0")
        if self.generator_batch < 2:
            raise ConfigError("the generator batch needs at least 2 samples")
        if not 0.0 < self.synthetic_share <= 10.0:
            raise ConfigError(f"synthetic share must be in (0, 10], got {self.synthetic_share}")
        if self.synthetic_budget_kb < 1:
            raise ConfigError("the synthetic budget must be at least 1 KiB")
        if not 0.0 <= self.max_weight <= 100.0 or not 0.0 < self.synthetic_decay <= 1.0:
            raise ConfigError("synthetic weight must be in [0, 100] and its decay in (0, 1]")
        if not 0.0 < self.synthetic_ratio <= 4.0 or not 0.0 < self.soft_temperature <= 100.0:
            raise ConfigError("synthetic ratio must be in (0, 4] and the soft-label temperature in (0, 100]")
        if self.synthetic_norm not in SYNTHETIC_NORMS:
            known = ", ".join(SYNTHETIC_NORMS)
            raise ConfigError(f"unknown synthetic norm {self.synthetic_norm!r}; use one of {known}")
        if not 0.0 <= self.pool_sharpness <= 10.0 or not 0.0 <= self.synthetic_every_class <= 1.0:
            raise ConfigError("the pool sharpness must be in [0, 10] and the every-class share in [0, 1]")
        if self.pool_scored_per_round < 1:
            raise ConfigError("the pool needs at least one image scored per round")
        if not 0 <= self.pool_probes <= MAX_PROBES:
            raise ConfigError(f"pool probes must be 0..{MAX_PROBES}, got {self.pool_probes}")
        if self.synthetic_restyle is not None and self.synthetic_restyle not in SYNTHETIC_RESTYLES:
            raise ConfigError(f"unknown restyle {self.synthetic_restyle!r}; use one of {', '.join(SYNTHETIC_RESTYLES)}")
        if self.replay < 0:
            raise ConfigError("the replay pool cannot be negative")
        if not 0.0 <= self.teacher_gate <= 1.0 or not 0.0 <= self.harm_tolerance <= 1.0:
            raise ConfigError("the teacher gate and the harm tolerance are shares in [0, 1]")
        if self.generator_device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"generator device must be auto, cpu or cuda, got {self.generator_device!r}")

    @property
    def max_weight(self) -> float:
        """The largest synthetic weight (see ``synthetic_weight``)."""
        if self.synthetic_weight is not None:
            return self.synthetic_weight
        return 0.3 if self.generator == GeneratorKind.DATA_FREE.value else 1.0

    @property
    def restyle(self) -> str:
        """How devices bridge a style gap (see ``synthetic_restyle``)."""
        if self.synthetic_restyle is not None:
            return self.synthetic_restyle
        return "none" if self.generator == GeneratorKind.DATA_FREE.value else "real"

    @property
    def warmup(self) -> int:
        """Rounds of plain FedAvg before the first synthetic batch (see ``warmup_rounds``)."""
        if self.warmup_rounds is not None:
            return self.warmup_rounds
        return 1 if self.generator == GeneratorKind.DATA_FREE.value else 0

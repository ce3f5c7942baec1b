"""The GenFL strategies' settings (``--generator``, ``--synthetic-*`` ... on the command line): a module of their
own, so that the strategy base and the GenFL strategies both read them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from protocol import MAX_PROBES, SYNTHETIC_NORMS, SYNTHETIC_RESTYLES, ConfigError, TrainConfig

__all__ = ["GENERATORS", "GeneratorKind", "GenflConfig"]


class GeneratorKind(str, Enum):
    DATA_FREE = "data-free"
    LOCAL_PIPELINE = "local-pipeline"
    POOL = "pool"


GENERATORS = tuple(g.value for g in GeneratorKind)


@dataclass(frozen=True)
class GenflConfig:
    """Settings of the GenFL strategies (``--generator``, ``--synthetic-*`` ... on the command line)."""

    generator: str = "data-free"  # data-free, local-pipeline or pool
    pipeline_path: str | None = None  # local-pipeline: the folder a diffusers pipeline was saved to
    synthetic_pool: str | None = None  # pool: a folder of class-named folders of images (generate-pool makes one)
    # Rounds of plain FedAvg before the first synthetic batch. None: 1 for the data-free generator (it learns from
    # a round's models first), 0 for a pool or a pipeline (their images are there from the start).
    warmup_rounds: int | None = None
    generator_steps: int = 40  # data-free generator updates per round
    generator_batch: int = 128
    distill_steps: int = 0  # genfl: server-side distillation steps per round (0: off)
    server_steps: int = 100  # aigc-only: training steps of the global model on synthetic data per round
    synthetic_share: float = 1.0  # fill lacking classes up to this share of a balanced set of the device's size
    synthetic_budget_kb: int = 1024  # at most this many KiB of synthetic data per device and round
    # The weight of the synthetic loss on the devices: `synthetic_weight`, when the evidence allows it:
    # - the teachers gate: the generator learns its labels from the devices' models, so synthetic data is sent
    #   only after a round whose models fit their own real data to at least `teacher_gate` (weighted training
    #   accuracy the devices report); below it the labels are guesses, and every device trains as with FedAvg;
    # - the harm check: a synthetic round after which the devices' accuracy of the model they received fell by
    #   more than `harm_tolerance` halves the weight; one that did no harm restores it (doubling).
    # None: 0.3 for the data-free generator (its images carry the teachers' guesses), 1.0 for a pool or a pipeline
    # (images of real quality may earn as much as real data; the pool's quality moves it below that).
    synthetic_weight: float | None = None
    synthetic_decay: float = 1.0  # x this per round after the first synthetic one
    teacher_gate: float = 0.9
    harm_tolerance: float = 0.02
    filter_disagreeing: bool = True  # drop images the ensemble does not label as asked
    synthetic_ratio: float = 1.0  # synthetic samples per real sample in each local batch
    synthetic_norm: str = TrainConfig.synthetic_norm  # how devices pass synthetic samples through BatchNorm
    # How devices bridge a style gap (protocol.SyntheticRestyle). None: real for a pool or a pipeline (half of a
    # device's images take its batch's colours each round), none data-free.
    synthetic_restyle: str | None = None
    # A pool is judged by the model the fleet trained on its own data: each round the current global model scores
    # every pool image (its probability of the class the image claims); images are drawn in proportion to that
    # score ** pool_sharpness (0: uniformly), and the synthetic weight follows the pool's quality, the share of
    # its images that model recognises over the share of the devices' own data it recognises (their reports).
    pool_sharpness: float = 2.0
    pool_evidence: bool = True
    pool_scored_per_round: int = 2048  # images the global model scores per round (a pool larger than this: in turns)
    pool_probes: int = 0  # pool: images of its own classes each device also judges per round (0: none)
    synthetic_every_class: float = 0.0  # every class, held ones too, gets at least this share of the target
    soft_labels: bool = False  # send the ensemble's probabilities instead of the hard labels
    soft_temperature: float = 1.0  # temperature of those probabilities
    bn_per_teacher: bool = False  # the data-free generator matches each teacher's BatchNorm statistics
    train_mode_sampling: bool = True  # ... and samples as it was optimised (batch statistics)
    replay: int = 0  # ... and keeps this many images of earlier rounds for distillation
    generator_device: str = "auto"  # cuda when present

    def __post_init__(self) -> None:
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

"""The GenFL options ``simulate`` and ``serve`` share (typed once, used by both commands)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cloud_server._genfl_config import GeneratorKind, GenflConfig
from protocol import SyntheticNorm, SyntheticRestyle

__all__ = [
    "DistillSteps",
    "GeneratorDevice",
    "Generator",
    "GeneratorSteps",
    "PipelinePath",
    "PoolProbes",
    "ServerSteps",
    "SoftLabels",
    "SyntheticBudget",
    "SyntheticDecay",
    "SyntheticNormOption",
    "SyntheticRestyleOption",
    "SyntheticShare",
    "SyntheticPool",
    "SyntheticWeight",
    "TeacherGate",
    "WarmupRounds",
    "genfl_config",
]

D = GenflConfig()
Generator = Annotated[GeneratorKind, typer.Option("--generator", help="GenFL: where synthetic images come from.")]
PipelinePath = Annotated[
    Optional[str], typer.Option(help="local-pipeline: folder of a saved diffusers pipeline (read offline).")
]
WarmupRounds = Annotated[
    Optional[int],
    typer.Option(help="GenFL: rounds of plain FedAvg before synthetic data (default: 1 data-free, 0 pool/pipeline)."),
]
GeneratorSteps = Annotated[int, typer.Option(help="GenFL: data-free generator updates per round.")]
DistillSteps = Annotated[int, typer.Option(help="genfl: server-side distillation steps per round (0: off).")]
ServerSteps = Annotated[int, typer.Option(help="aigc-only: server training steps on synthetic data per round.")]
SyntheticShare = Annotated[float, typer.Option(help="GenFL: fill lacking classes up to this share of balanced.")]
SyntheticBudget = Annotated[int, typer.Option("--synthetic-budget-kb", help="GenFL: KiB per device and round.")]
SyntheticWeight = Annotated[
    Optional[float],
    typer.Option(help="GenFL: the largest weight of the synthetic loss (default: 0.3 data-free, 1.0 pool/pipeline)."),
]
SyntheticDecay = Annotated[float, typer.Option(help="GenFL: the weight is multiplied by this each round.")]
SoftLabels = Annotated[bool, typer.Option("--soft-labels/--hard-labels", help="GenFL: ensemble probabilities.")]
SyntheticPool = Annotated[
    Optional[str],
    typer.Option(help="GenFL: draw synthetic images from this pool folder (POOL/<class>/<image>; generate-pool)."),
]
GeneratorDevice = Annotated[str, typer.Option(help="GenFL generator device: auto, cpu or cuda.")]
PoolProbes = Annotated[
    int, typer.Option(help="GenFL pool: images of its own classes each device judges per round (0: no curation).")
]
SyntheticNormOption = Annotated[
    SyntheticNorm,
    typer.Option("--synthetic-norm", help="GenFL: synthetic samples through BatchNorm with the real ones, or frozen."),
]
SyntheticRestyleOption = Annotated[
    Optional[SyntheticRestyle],
    typer.Option(
        "--synthetic-restyle",
        help="GenFL: bridge a style gap on the devices: none, synthetic (to their colours), real (half of theirs "
        "to the synthetic images' colours), auto (real where the colours differ). Default: real for a pool or "
        "pipeline, none data-free.",
    ),
]
TeacherGate = Annotated[
    float, typer.Option(help="GenFL: send synthetic data only after devices' models fit their data this well.")
]


def genfl_config(
    *,
    generator: str | GeneratorKind,
    pipeline_path: str | None,
    warmup_rounds: int | None,
    generator_steps: int,
    distill_steps: int,
    server_steps: int,
    synthetic_share: float,
    synthetic_budget_kb: int,
    synthetic_weight: float | None,
    synthetic_decay: float,
    soft_labels: bool,
    generator_device: str,
    teacher_gate: float = D.teacher_gate,
    synthetic_pool: str | None = None,
    pool_probes: int = D.pool_probes,
    synthetic_norm: str | SyntheticNorm = D.synthetic_norm,
    synthetic_restyle: str | SyntheticRestyle | None = D.synthetic_restyle,
) -> GenflConfig:
    return GenflConfig(
        generator="pool" if synthetic_pool is not None else GeneratorKind(generator).value,
        synthetic_pool=synthetic_pool,
        pipeline_path=pipeline_path,
        warmup_rounds=warmup_rounds,
        generator_steps=generator_steps,
        distill_steps=distill_steps,
        server_steps=server_steps,
        synthetic_share=synthetic_share,
        synthetic_budget_kb=synthetic_budget_kb,
        synthetic_weight=synthetic_weight,
        synthetic_decay=synthetic_decay,
        soft_labels=soft_labels,
        generator_device=generator_device,
        teacher_gate=teacher_gate,
        pool_probes=pool_probes,
        synthetic_norm=SyntheticNorm(synthetic_norm).value,
        synthetic_restyle=None if synthetic_restyle is None else SyntheticRestyle(synthetic_restyle).value,
    )

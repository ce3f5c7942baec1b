"""``genfl-server serve``: the coordinator service (what the systemd unit starts)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cloud_server._genfl_config import GeneratorKind
from cloud_server._robust import Aggregation
from cloud_server._strategy import StrategyName
from protocol import DEFAULT_CHUNK_SIZE, DEFAULT_ROUND_TIMEOUT_S, Codec, SyntheticNorm, exit_on_error, parse_classes

from ._genfl_options import (
    D,
    DistillSteps,
    Generator,
    GeneratorDevice,
    GeneratorSteps,
    PipelinePath,
    PoolProbes,
    ServerSteps,
    SoftLabels,
    SyntheticBudget,
    SyntheticDecay,
    SyntheticNormOption,
    SyntheticPool,
    SyntheticRestyleOption,
    SyntheticShare,
    SyntheticWeight,
    TeacherGate,
    WarmupRounds,
    genfl_config,
)
from ._training_options import (
    AggregateOption,
    AugmentOption,
    BatchSize,
    CodecOption,
    Fraction,
    LearningRate,
    LocalEpochs,
    Momentum,
    Mu,
    Qat,
    RoundTimeout,
    S,
    StrategyOption,
    Trim,
    WeightDecay,
)


def serve(
    state_dir: Annotated[Path, typer.Option(help="SQLite state, blobs and per-round checkpoints.")],
    fleet: Annotated[str, typer.Option(help="Fleet name (the topic prefix genfl/<fleet>/).")] = "default",
    model: Annotated[str, typer.Option(help="Model from the registry.")] = "cnn-digits",
    classes: Annotated[
        Optional[str],
        typer.Option(
            help="The fleet's class names in the model's order, comma-separated (boards map their folders onto "
            "them by name). Default: the list the state dir started with, else 0,1,...,N-1."
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Rounds to run.")] = 100,
    min_devices: Annotated[int, typer.Option(help="Devices needed to open and to close a round.")] = 1,
    fraction: Fraction = S.fraction,
    round_timeout: RoundTimeout = DEFAULT_ROUND_TIMEOUT_S,
    max_failed_rounds: Annotated[
        int, typer.Option(help="Stop after this many rounds in a row that every answering board failed (0: never).")
    ] = 3,
    accept_older_state: Annotated[
        bool,
        typer.Option(help="Go on from a state older than the fleet (a restored backup), numbering rounds after it."),
    ] = False,
    strategy: StrategyOption = StrategyName.FEDAVG,
    mu: Mu = S.prox_mu,
    local_epochs: LocalEpochs = S.local_epochs,
    batch_size: BatchSize = S.batch_size,
    lr: LearningRate = S.learning_rate,
    momentum: Momentum = S.momentum,
    weight_decay: WeightDecay = S.weight_decay,
    augment: AugmentOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial model and the device sampling.")] = 0,
    chunk_size: Annotated[
        int, typer.Option(help="Blob chunk size in bytes (fit the broker's max packet).")
    ] = DEFAULT_CHUNK_SIZE,
    broker: Annotated[
        Optional[str],
        typer.Option(help="Broker URL (a cluster: its nodes, comma-separated); without it an embedded broker starts."),
    ] = None,
    broker_port: Annotated[Optional[int], typer.Option(help="Embedded broker port (default: free).")] = None,
    embedded_broker: Annotated[str, typer.Option(help="Without --broker: auto, mosquitto or amqtt.")] = "auto",
    codec: CodecOption = Codec(S.codec),
    qat: Qat = S.qat,
    aggregate: AggregateOption = Aggregation(S.aggregate),
    trim: Trim = S.trim,
    max_norm: Annotated[Optional[float], typer.Option(help="Reject updates with a larger L2 norm.")] = None,
    generator: Generator = GeneratorKind(D.generator),
    pipeline_path: PipelinePath = None,
    warmup_rounds: WarmupRounds = D.warmup_rounds,
    generator_steps: GeneratorSteps = D.generator_steps,
    distill_steps: DistillSteps = D.distill_steps,
    server_steps: ServerSteps = D.server_steps,
    synthetic_share: SyntheticShare = D.synthetic_share,
    synthetic_budget_kb: SyntheticBudget = D.synthetic_budget_kb,
    synthetic_weight: SyntheticWeight = D.synthetic_weight,
    synthetic_decay: SyntheticDecay = D.synthetic_decay,
    soft_labels: SoftLabels = D.soft_labels,
    generator_device: GeneratorDevice = D.generator_device,
    teacher_gate: TeacherGate = D.teacher_gate,
    synthetic_pool: SyntheticPool = None,
    pool_probes: PoolProbes = D.pool_probes,
    synthetic_norm: SyntheticNormOption = SyntheticNorm(D.synthetic_norm),
    synthetic_restyle: SyntheticRestyleOption = None,
    metrics_port: Annotated[
        Optional[int], typer.Option(help="Serve Prometheus metrics on http://HOST:PORT/metrics (0: a free port).")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address the metrics (and dashboard) listen on.")] = "127.0.0.1",
    dashboard: Annotated[
        bool, typer.Option("--dashboard/--no-dashboard", help="A read-only fleet page on the metrics port.")
    ] = False,
    eval_dataset: Annotated[
        Optional[str], typer.Option(help="Score each new model on this data set's test split (e.g. digits).")
    ] = None,
    eval_data_dir: Annotated[Path, typer.Option(help="Where --eval-dataset's files are.")] = Path("data"),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run federated rounds for a fleet over MQTT, persisting everything it accepts."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # torch and the model take seconds to load: say what is happening before it
    logging.getLogger("genfl.server").info("starting: loading torch, the model and the state in %s", state_dir)
    from cloud_server._serve import ServeConfig, run_server

    with exit_on_error():
        config = ServeConfig(
            state_dir=state_dir,
            fleet=fleet,
            model=model,
            rounds=rounds,
            min_devices=min_devices,
            fraction=fraction,
            round_timeout_s=round_timeout,
            max_failed_rounds=max_failed_rounds or None,
            accept_older_state=accept_older_state,
            strategy=strategy.value,
            prox_mu=mu,
            local_epochs=local_epochs,
            batch_size=batch_size,
            learning_rate=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            augment=None if augment is None else augment.value,
            seed=seed,
            chunk_size=chunk_size,
            broker=broker,
            embedded_broker=embedded_broker,
            broker_port=broker_port,
            aggregate=aggregate.value,
            codec=codec.value,
            qat=qat,
            trim=trim,
            max_update_norm=max_norm,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            dashboard=dashboard,
            eval_dataset=eval_dataset,
            eval_data_dir=eval_data_dir,
            classes=None if classes is None else parse_classes(classes),
            genfl=genfl_config(
                generator=generator,
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
                synthetic_pool=synthetic_pool,
                pool_probes=pool_probes,
                synthetic_norm=synthetic_norm,
                synthetic_restyle=synthetic_restyle,
            ),
        )
        code = run_server(config)
    raise typer.Exit(code=code)

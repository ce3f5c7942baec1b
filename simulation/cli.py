"""``genfl-server simulate``: a whole federation in one process."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloud_server._coordinator import RoundResult
from cloud_server._genfl_config import GeneratorKind
from cloud_server._robust import Aggregation
from cloud_server._strategy import StrategyName
from cloud_server.cli._genfl_options import (
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
from cloud_server.cli._training_options import (
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
from protocol import DEFAULT_ROUND_TIMEOUT_S, Codec, SyntheticNorm, exit_on_error

from ._attacks import Attack
from ._report import histogram_table

console = Console(stderr=True)


def simulate(
    dataset: Annotated[str, typer.Option(help="digits, cifar10, folder:PATH or zip:PATH.")] = "digits",
    devices: Annotated[int, typer.Option(help="Number of simulated devices.")] = 10,
    partition: Annotated[str, typer.Option(help="dirichlet or shards.")] = "dirichlet",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (smaller = more skewed).")] = 0.5,
    classes_per_device: Annotated[int, typer.Option(help="Classes per device for --partition shards.")] = 2,
    min_samples: Annotated[int, typer.Option(help="Least samples any device gets.")] = 10,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 10,
    local_epochs: LocalEpochs = S.local_epochs,
    batch_size: BatchSize = S.batch_size,
    lr: LearningRate = S.learning_rate,
    momentum: Momentum = S.momentum,
    weight_decay: WeightDecay = S.weight_decay,
    augment: AugmentOption = None,
    strategy: StrategyOption = StrategyName.FEDAVG,
    mu: Mu = S.prox_mu,
    fraction: Fraction = S.fraction,
    seed: Annotated[int, typer.Option(help="Seed for partitions, initial model and training.")] = 0,
    model: Annotated[Optional[str], typer.Option(help="Model from the registry (default: by data set).")] = None,
    train_subset: Annotated[Optional[int], typer.Option(help="Train on a stratified subset of this size.")] = None,
    torch_device: Annotated[str, typer.Option(help="Where simulated devices train: cpu, cuda or auto.")] = "cpu",
    transport: Annotated[str, typer.Option(help="local (in-memory) or mqtt (a connection per device).")] = "local",
    broker: Annotated[
        Optional[str],
        typer.Option(
            help="Broker URL for --transport mqtt, or a cluster's nodes comma-separated (agents spread "
            "over them); default: an embedded one."
        ),
    ] = None,
    embedded_broker: Annotated[str, typer.Option(help="Without --broker: auto, mosquitto or amqtt.")] = "auto",
    worker: Annotated[
        str, typer.Option(help="--transport mqtt: pool (one torch-preloaded training pool), persistent or per-task.")
    ] = "pool",
    worker_slots: Annotated[
        Optional[int], typer.Option(help="At most this many train at once (pool: default the cores).")
    ] = None,
    round_timeout: RoundTimeout = DEFAULT_ROUND_TIMEOUT_S,
    agents_per_process: Annotated[
        int, typer.Option(help="--transport mqtt: simulated agents per process (a thousand fit in one machine).")
    ] = 1,
    codec: CodecOption = Codec(S.codec),
    qat: Qat = S.qat,
    aggregate: AggregateOption = Aggregation(S.aggregate),
    trim: Trim = S.trim,
    malicious: Annotated[int, typer.Option(help="Devices that send corrupted updates (in-memory).")] = 0,
    attack: Annotated[Attack, typer.Option(help="What --malicious devices do (sign-flip: x-10).")] = Attack.SIGN_FLIP,
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
    share_label_counts: Annotated[
        bool, typer.Option("--share-label-counts/--no-share-label-counts", help="Devices send label histograms.")
    ] = True,
    label_noise: Annotated[
        Optional[float], typer.Option(metavar="EPSILON", help="Laplace noise on the histograms (epsilon-DP).")
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Where cifar10 is (or is downloaded to).")] = Path("data"),
    out: Annotated[Path, typer.Option(help="Output folder for metrics.json, curve.png, model.safetensors.")] = Path(
        "runs/simulate"
    ),
    compare: Annotated[
        Optional[StrategyName],
        typer.Option(help="Then run this strategy on the same partitions and seed, and compare."),
    ] = None,
) -> None:
    """Run a federation of simulated devices in one process and report accuracy per round."""
    from ._simulation import SimulationConfig, write_outputs

    with exit_on_error():
        config = SimulationConfig(
            dataset=dataset,
            data_dir=str(data_dir),
            devices=devices,
            partition=partition,
            alpha=alpha,
            classes_per_device=classes_per_device,
            min_samples=min_samples,
            rounds=rounds,
            local_epochs=local_epochs,
            batch_size=batch_size,
            learning_rate=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            augment=None if augment is None else augment.value,
            strategy=strategy.value,
            prox_mu=mu,
            fraction=fraction,
            seed=seed,
            model=model,
            train_subset=train_subset,
            torch_device=torch_device,
            transport=transport,
            broker=broker,
            embedded_broker=embedded_broker,
            worker=worker,
            aggregate=aggregate.value,
            codec=codec.value,
            qat=qat,
            trim=trim,
            malicious=malicious,
            attack=attack.value,
            worker_slots=worker_slots,
            agents_per_process=agents_per_process,
            round_timeout_s=round_timeout,
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
            share_label_counts=share_label_counts,
            label_noise=label_noise,
            fleet=f"sim-{uuid.uuid4().hex[:8]}" if transport == "mqtt" else "sim",
        )
        results = [_run_one(config, rounds, devices, dataset)]
        if compare is not None:
            from dataclasses import replace

            other = replace(
                config, strategy=compare.value, fleet=f"sim-{uuid.uuid4().hex[:8]}" if transport == "mqtt" else "sim"
            )
            results.append(_run_one(other, rounds, devices, dataset))
        console.print(histogram_table(results[0].classes, results[0].histogram, "samples per device and class"))
        paths = write_outputs(results[0], out, compared=results[1:])
        for result in results:
            console.print(f"{result.config.strategy}: final accuracy [bold]{result.final_accuracy:.4f}[/] "
                          f"in {result.seconds:.1f} s")  # fmt: skip
        if len(results) == 2:
            typer.echo(verdict(results[0], results[1]), err=True)  # one line, never wrapped
        console.print(f"wrote {paths['metrics']}, {paths['curve']}, {paths['model']}")


def verdict(first, second) -> str:  # type: ignore[no-untyped-def]
    """One line: which strategy ended higher, by how much, and how soon the first reached the other's final."""
    a, b = first.config.strategy, second.config.strategy
    final_a, final_b = first.final_accuracy or 0.0, second.final_accuracy or 0.0
    reached = next((r.round for r in first.rounds if (r.accuracy or 0.0) >= final_b), None)
    when = f"; {a} reached {b}'s final accuracy in round {reached} of {len(first.rounds)}" if reached else ""
    better = a if final_a >= final_b else b
    return (f"verdict: {better} wins, {a} {100 * final_a:.1f}% vs {b} {100 * final_b:.1f}% after "
            f"{len(first.rounds)} rounds ({100 * (final_a - final_b):+.1f} points){when}")  # fmt: skip


def _run_one(config, rounds: int, devices: int, dataset: str):  # type: ignore[no-untyped-def]
    """One simulation with a progress bar and a table of its rounds."""
    from ._simulation import SimulationHooks, run_simulation

    strategy = config.strategy
    rows = Table(title=f"{strategy} on {dataset}, {devices} devices")
    generative = strategy in ("genfl", "aigc-only")
    columns = ["round", "devices", "accuracy", "loss", "seconds", "KB up", "KB down"]
    for column in columns + (["gen s", "KB syn"] if generative else []):
        rows.add_column(column, justify="right")
    with Progress(
        TextColumn(f"[bold]{strategy} round " + "{task.fields[round]}/" + str(rounds)),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("updates"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("round", total=devices, round=0)

        def opened(number: int, picked: int) -> None:
            progress.reset(bar, total=picked, round=number)

        def closed(result: RoundResult) -> None:
            accuracy = "-" if result.accuracy is None else f"{result.accuracy:.4f}"
            loss = "-" if result.loss is None else f"{result.loss:.4f}"
            cells = [
                str(result.round), str(result.devices), accuracy, loss, f"{result.seconds:.2f}",
                f"{result.bytes_up / 1024:.0f}", f"{result.bytes_down / 1024:.0f}",
            ]  # fmt: skip
            if generative:
                cells += [f"{result.generator_s:.1f}", f"{result.synthetic_bytes / 1024:.0f}"]
            rows.add_row(*cells)
            progress.console.print(f"{strategy} round {result.round}: accuracy {accuracy}, {result.seconds:.2f} s")

        hooks = SimulationHooks(
            on_round_start=opened,
            on_update_accepted=lambda device_id: progress.advance(bar),
            on_round_closed=closed,
        )
        result = run_simulation(config, hooks)
    console.print(rows)
    return result

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
from cloud_server._simulation import SimulationConfig, SimulationHooks, run_simulation, write_outputs
from cloud_server._strategy import StrategyConfig
from edge_agent import histogram_table

from ._errors import exit_on_error
from ._genfl_options import (
    D,
    DistillSteps,
    GeneratorDevice,
    GeneratorKind,
    GeneratorSteps,
    PipelinePath,
    ServerSteps,
    SoftLabels,
    SyntheticBudget,
    SyntheticDecay,
    SyntheticShare,
    SyntheticWeight,
    WarmupRounds,
    genfl_config,
)

console = Console(stderr=True)


def simulate(
    dataset: Annotated[str, typer.Option(help="digits, cifar10, folder:PATH or zip:PATH.")] = "digits",
    devices: Annotated[int, typer.Option(help="Number of simulated devices.")] = 10,
    partition: Annotated[str, typer.Option(help="dirichlet or shards.")] = "dirichlet",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (smaller = more skewed).")] = 0.5,
    classes_per_device: Annotated[int, typer.Option(help="Classes per device for --partition shards.")] = 2,
    min_samples: Annotated[int, typer.Option(help="Least samples any device gets.")] = 10,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 10,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = StrategyConfig.local_epochs,
    batch_size: Annotated[int, typer.Option(help="Local batch size.")] = StrategyConfig.batch_size,
    lr: Annotated[float, typer.Option(help="Local SGD learning rate.")] = StrategyConfig.learning_rate,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, genfl or aigc-only.")] = "fedavg",
    mu: Annotated[float, typer.Option(help="FedProx proximal weight.")] = 0.01,
    fraction: Annotated[float, typer.Option(help="Share of devices picked each round.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for partitions, initial model and training.")] = 0,
    model: Annotated[Optional[str], typer.Option(help="Model from the registry (default: by data set).")] = None,
    train_subset: Annotated[Optional[int], typer.Option(help="Train on a stratified subset of this size.")] = None,
    torch_device: Annotated[str, typer.Option(help="Where simulated devices train: cpu, cuda or auto.")] = "cpu",
    transport: Annotated[str, typer.Option(help="local (in-memory) or mqtt (a connection per device).")] = "local",
    broker: Annotated[
        Optional[str], typer.Option(help="Broker URL for --transport mqtt (default: start an embedded one).")
    ] = None,
    embedded_broker: Annotated[str, typer.Option(help="Without --broker: auto, mosquitto or amqtt.")] = "auto",
    worker: Annotated[str, typer.Option(help="Agents' worker mode for --transport mqtt.")] = "persistent",
    worker_slots: Annotated[
        Optional[int], typer.Option(help="With --worker per-task: at most this many train at once.")
    ] = None,
    codec: Annotated[str, typer.Option(help="How devices send updates: fp32, int8 or int4.")] = "fp32",
    qat: Annotated[
        bool, typer.Option("--qat/--no-qat", help="Devices train int8 quantization-aware (default) or in float.")
    ] = True,
    aggregate: Annotated[str, typer.Option(help="fedavg, median, trimmed-mean or clipped.")] = "fedavg",
    trim: Annotated[float, typer.Option(help="Share trimmed from each end by trimmed-mean.")] = 0.2,
    malicious: Annotated[int, typer.Option(help="Devices that send corrupted updates (in-memory).")] = 0,
    attack: Annotated[str, typer.Option(help="scale, sign-flip (x-10) or noise.")] = "sign-flip",
    generator: GeneratorKind = D.generator,
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
) -> None:
    """Run a federation of simulated devices in one process and report accuracy per round."""
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
            strategy=strategy,
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
            aggregate=aggregate,
            codec=codec,
            qat=qat,
            trim=trim,
            malicious=malicious,
            attack=attack,
            worker_slots=worker_slots,
            genfl=genfl_config(
                generator,
                pipeline_path,
                warmup_rounds,
                generator_steps,
                distill_steps,
                server_steps,
                synthetic_share,
                synthetic_budget_kb,
                synthetic_weight,
                synthetic_decay,
                soft_labels,
                generator_device,
            ),
            share_label_counts=share_label_counts,
            label_noise=label_noise,
            fleet=f"sim-{uuid.uuid4().hex[:8]}" if transport == "mqtt" else "sim",
        )
        rows = Table(title=f"{strategy} on {dataset}, {devices} devices")
        generative = strategy in ("genfl", "aigc-only")
        columns = ["round", "devices", "accuracy", "loss", "seconds", "KB up", "KB down"]
        for column in columns + (["gen s", "KB syn"] if generative else []):
            rows.add_column(column, justify="right")
        with Progress(
            TextColumn("[bold]round {task.fields[round]}/" + str(rounds)),
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
                progress.console.print(
                    f"round {result.round}: accuracy {accuracy}, loss {loss}, {result.seconds:.2f} s"
                )

            hooks = SimulationHooks(
                on_round_start=opened,
                on_update_accepted=lambda device_id: progress.advance(bar),
                on_round_closed=closed,
            )
            result = run_simulation(config, hooks)
        console.print(histogram_table(result.classes, result.histogram, "samples per device and class"))
        console.print(rows)
        paths = write_outputs(result, out)
        console.print(
            f"final accuracy [bold]{result.final_accuracy:.4f}[/] in {result.seconds:.1f} s; "
            f"wrote {paths['metrics']}, {paths['curve']}, {paths['model']}"
        )

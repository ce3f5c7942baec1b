"""``genfl-server simulate``: a whole federation in one process."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloud_server.learning._strategy import StrategyName
from cloud_server.rounds._coordinator import RoundResult
from protocol import exit_on_error, options_from

from ._config import SimulationConfig
from ._report import histogram_table

console = Console(stderr=True)


@options_from(SimulationConfig)
def simulate(
    config: SimulationConfig,
    out: Annotated[Path, typer.Option(help="Output folder for metrics.json, curve.png, model.safetensors.")] = Path(
        "runs/simulate"
    ),
    compare: Annotated[
        Optional[StrategyName],
        typer.Option(help="Then run this strategy on the same partitions and seed, and compare."),
    ] = None,
) -> None:
    """Run a federation of simulated devices in one process and report accuracy per round."""
    from dataclasses import replace

    from ._simulation import write_outputs

    def fleet() -> str:  # an MQTT run's topics must not meet another's on a shared broker
        return f"sim-{uuid.uuid4().hex[:8]}" if config.transport == "mqtt" else "sim"

    with exit_on_error():
        config = replace(config, fleet=fleet())
        results = [_run_one(config)]
        if compare is not None:
            results.append(_run_one(replace(config, strategy=compare.value, fleet=fleet())))
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


def _run_one(config: SimulationConfig):  # type: ignore[no-untyped-def]
    """One simulation with a progress bar and a table of its rounds."""
    from ._simulation import SimulationHooks, run_simulation

    strategy, rounds, devices, dataset = config.strategy, config.rounds, config.devices, config.dataset
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
                cells += [
                    f"{result.metrics.get('generator_s', 0.0):.1f}",
                    f"{result.metrics.get('bytes', 0) / 1024:.0f}",
                ]
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

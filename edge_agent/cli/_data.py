"""``genfl-edge data``: check the data this device would train on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge_agent._data import load_dataset
from protocol import exit_on_error

console = Console()


def data(
    source: Annotated[str, typer.Argument(help="digits, cifar10, folder:PATH or zip:PATH.")] = "digits",
    data_dir: Annotated[Path, typer.Option(help="Where cifar10 is (or is downloaded to).")] = Path("data"),
) -> None:
    """Load the device's data and print its classes, sizes and label counts."""
    with exit_on_error():
        dataset = load_dataset(source, data_dir)
    c, h, w = dataset.input_shape
    table = Table(title=f"{dataset.name}: {len(dataset.train)} train / {len(dataset.test)} test, {c}x{h}x{w}")
    table.add_column("class")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    train_counts = dataset.train.label_counts(dataset.num_classes)
    test_counts = dataset.test.label_counts(dataset.num_classes)
    for index, name in enumerate(dataset.classes):
        table.add_row(name, str(int(train_counts[index])), str(int(test_counts[index])))
    console.print(table)

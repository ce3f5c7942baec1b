"""``genfl-server generate-pool``: fill a synthetic pool with a pretrained pipeline on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protocol import exit_on_error, parse_classes


def generate_pool(
    pipeline_path: Annotated[Path, typer.Option(help="Folder of a diffusers pipeline saved with save_pretrained.")],
    classes: Annotated[
        str, typer.Option(help="Class names, comma-separated: the prompts and the folder names (the fleet's names).")
    ],
    out: Annotated[Path, typer.Option(help="The pool: OUT/<class>/<sha256>.png; an existing one grows.")],
    per_class: Annotated[int, typer.Option(help="Images to make for each class.")] = 100,
    model: Annotated[str, typer.Option(help="The model whose input size and channels the images take.")] = "cnn-small",
    device: Annotated[str, typer.Option(help="Where the pipeline runs: cpu or cuda.")] = "cpu",
    inference_steps: Annotated[int, typer.Option(help="Denoising steps per image.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the noise (another seed, other images).")] = 0,
) -> None:
    """Make --per-class images of every class offline and add them to a pool `serve --synthetic-pool` uses."""
    with exit_on_error():
        from cloud_server.learning._pool import generate_pool as make

        names = parse_classes(classes)  # they become folder names: no '/', no leading '.'
        report = make(pipeline_path, model, names, per_class, out, device=device, seed=seed,
                      inference_steps=inference_steps)  # fmt: skip
    held = ", ".join(f"{name} {count}" for name, count in report.held.items())
    typer.echo(f"made {report.made} images in {report.seconds:.1f} s ({report.images_per_second:.2f} images/s); "
               f"{out} holds {sum(report.held.values())} ({held})")  # fmt: skip

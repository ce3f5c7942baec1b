"""``genfl-server release``, ``releases`` and ``rollback``: the models the fleet's boards are told to run."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from protocol import ConfigError, Release, exit_on_error

StateDir = Annotated[Path, typer.Option(help="The server's state dir (the one `serve` uses).")]


def release(
    state_dir: StateDir,
    round_number: Annotated[
        Optional[int], typer.Option("--round", help="The round's checkpoint (default: the latest).")
    ] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Release this checkpoint instead of a round's.")] = None,
    int8: Annotated[bool, typer.Option("--int8/--float", help="int8 (calibrated; the default) or float.")] = True,
    calibration: Annotated[
        Optional[str], typer.Option(help="Images to calibrate int8 on (the synthetic pool, folder:POOL, will do).")
    ] = None,
    note: Annotated[str, typer.Option(help="A line the release carries (what changed).")] = "",
) -> None:
    """Make a release of a round's model, current for the fleet: ONNX, checked against PyTorch, signed."""
    with exit_on_error():
        from cloud_server.ops._export import export_checkpoint, latest_checkpoint
        from cloud_server.ops._releases import release_book
        from cloud_server.rounds._journal_reader import JournalReader

        if checkpoint is not None and round_number is not None:
            raise ConfigError("give --round or --checkpoint, not both")
        source = checkpoint if checkpoint is not None else latest_checkpoint(state_dir, round_number)
        number = 0 if checkpoint is not None else int(source.stem.removeprefix("round-"))
        journal = JournalReader(state_dir)
        row = journal.round(number) if number and journal.exists() else None  # its accuracy, if the server scored it
        book = release_book(state_dir)
        with tempfile.TemporaryDirectory(dir=state_dir) as work:
            exported = export_checkpoint(source, Path(work) / "model.onnx", int8=int8, calibration=calibration,
                                         say=lambda line: typer.echo(line, err=True))  # fmt: skip
            model = exported.path.read_bytes()
        stored = book.add(model, model_name=exported.model_name, classes=exported.classes,
                          input_shape=exported.input_shape, int8=int8, round_number=number,
                          accuracy=None if row is None else row.accuracy, note=note)  # fmt: skip
    typer.echo(exported.summary, err=True)
    typer.echo(f"{stored.release.describe()}: current (serve tells the fleet)")


def _row(release: Release, current: int | None) -> dict[str, object]:
    return {
        "version": release.version,
        "current": release.version == current,
        "model": release.model_name,
        "int8": release.int8,
        "round": release.round,
        "accuracy": release.accuracy,
        "bytes": release.model_size,
        "sha256": release.model_id,
        "created": release.created,
        "note": release.note,
    }


def releases(
    state_dir: StateDir,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """The fleet's releases, oldest first, and which one is current."""
    with exit_on_error():
        from cloud_server.ops._releases import release_book

        book = release_book(state_dir)
        found = book.releases()
        current = book.current()
    now = None if current is None else current.release.version
    rows = [_row(stored.release, now) for stored in found]
    if as_json:
        typer.echo(json.dumps({"releases": rows}, indent=2))
        return
    if not rows:
        typer.echo("no releases yet: genfl-server release --state-dir ...")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created"]))  # type: ignore[arg-type]
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        typer.echo(f"{'*' if row['current'] else ' '} {row['version']:>4}  {row['model']}  "
                   f"{'int8' if row['int8'] else 'float'}  round {row['round']}  accuracy {accuracy}  "
                   f"{row['bytes']} B  {str(row['sha256'])[:12]}  {when}  {row['note']}")  # fmt: skip


def rollback(
    version: Annotated[int, typer.Argument(help="The release to make current again.")],
    state_dir: StateDir,
) -> None:
    """Make an earlier release current again: serve tells the fleet, and the boards deploy it."""
    with exit_on_error():
        from cloud_server.ops._releases import release_book

        stored = release_book(state_dir).make_current(version)
    typer.echo(f"{stored.release.describe()}: current again (serve tells the fleet)")

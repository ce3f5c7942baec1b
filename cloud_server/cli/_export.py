"""``genfl-server export``: the global model to ONNX (float or int8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_agent.cli._options import ExportFormat, FormatOption, Int8Option, OnnxOut
from protocol import ConfigError, exit_on_error


def export(
    out: OnnxOut,
    format: FormatOption = ExportFormat.ONNX,
    int8: Int8Option = False,
    state_dir: Annotated[Optional[Path], typer.Option(help="Export the latest checkpoint of this state dir.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Export this checkpoint (e.g. simulate's model).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name, if the checkpoint does not say.")] = None,
    calibration: Annotated[
        Optional[str], typer.Option(help="Data for the check and int8 calibration (default: digits for cnn-digits).")
    ] = None,
) -> None:
    """Export a checkpoint to ONNX; the file is written only if onnxruntime agrees with PyTorch."""
    with exit_on_error():
        if (state_dir is None) == (checkpoint is None):
            raise ConfigError("give exactly one of --state-dir and --checkpoint")
        from cloud_server.ops._export import export_checkpoint, latest_checkpoint

        source = checkpoint if checkpoint is not None else latest_checkpoint(state_dir)  # type: ignore[arg-type]
        exported = export_checkpoint(source, out, int8=int8, model=model, calibration=calibration,
                                     say=lambda line: typer.echo(line, err=True))  # fmt: skip
        typer.echo(exported.summary)

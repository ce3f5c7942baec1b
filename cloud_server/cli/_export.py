"""``genfl-server export``: the global model to ONNX (float or int8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from edge_agent import load_dataset, with_channels
from edge_agent.cli._options import ExportFormat, FormatOption, Int8Option, OnnxOut
from protocol import ConfigError, ModelError, exit_on_error


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
        if checkpoint is None:
            assert state_dir is not None
            found = sorted((state_dir / "checkpoints").glob("round-*.safetensors"))
            if not found:
                raise ModelError(f"{state_dir}: no checkpoints yet")
            checkpoint = found[-1]
        from models import checkpoint_classes, get_spec, read_checkpoint
        from models._onnx import export_onnx

        model_name, state = read_checkpoint(checkpoint, model)
        classes = checkpoint_classes(checkpoint)  # the fleet's list the model was trained with
        shape = get_spec(model_name).input_shape
        if calibration is None and model_name == "cnn-digits":
            calibration = "digits"  # the bundled data is what this model is for
        if calibration is None and int8:
            raise ConfigError(
                "int8 needs images like the devices' data to calibrate: --calibration SPEC (the synthetic pool, "
                "folder:POOL, will do), or export int8 on a board (genfl-edge export --int8 on its own data)"
            )
        if calibration is None:  # a float export needs no data: parity is checked on generated images
            check = np.random.default_rng(0).integers(0, 256, size=(256, *shape), dtype=np.uint8)
            names = classes
            typer.echo(f"checking the float export on {len(check)} generated images (no --calibration)", err=True)
            calibration_images = None
        else:
            dataset = load_dataset(calibration)
            check = with_channels(dataset.test, shape).images[:1000]
            calibration_images = with_channels(dataset.train, shape).images[:512]
            names = classes or dataset.classes
        typer.echo(f"exporting {model_name} from {checkpoint} ({'int8' if int8 else 'fp32'}) ...", err=True)
        report = export_onnx(model_name, state, out, int8=int8, check_images=check,
                             calibration_images=calibration_images, classes=names)  # fmt: skip
        typer.echo(report.summary(str(checkpoint)))

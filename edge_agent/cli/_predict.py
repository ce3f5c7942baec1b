"""``genfl-edge predict`` and ``genfl-edge export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_agent._data import load_dataset
from edge_agent.cli._enroll import HomeOption
from edge_agent.cli._options import ExportFormat, FormatOption, Int8Option, OnnxOut
from protocol import ConfigError, DataError, ModelError, exit_on_error


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders of images.")],
    model: Annotated[
        Optional[Path], typer.Option(help="An ONNX model (default: the release this board deployed).")
    ] = None,
    state_dir: Annotated[
        Optional[Path], typer.Option(help="The agent's state folder, whose deployed release to use.")
    ] = None,
    home: HomeOption = None,
    resize: Annotated[
        bool, typer.Option(help="Scale images to the model's input size instead of refusing them.")
    ] = False,
) -> None:
    """Classify images with an ONNX model (onnxruntime): the board's deployed release unless --model says;
    prints path, class and probability per image.

    An image that cannot be used is reported on stderr and the others go on (exit 3 at the end if any was).
    """
    from edge_agent._predict import OnnxClassifier, image_paths

    failed = 0
    with exit_on_error():
        classifier = OnnxClassifier(model or _deployed_model(state_dir, home))
        for outcome in classifier.predict_each(image_paths(images), resize=resize):
            if isinstance(outcome, DataError):
                failed += 1
                typer.echo(f"error: {outcome}", err=True)
            else:
                typer.echo(f"{outcome.path}\t{outcome.label}\t{outcome.probability:.4f}")
    if failed:
        typer.echo(f"{failed} image(s) could not be classified", err=True)
        raise typer.Exit(code=DataError.exit_code)


def _deployed_model(state_dir: Path | None, home: Path | None) -> Path:
    """The release a board deployed: ``STATE/model/current.onnx`` of ``state_dir``, or of the enrolled home's."""
    from edge_agent._daemon import load_agent_config
    from edge_agent._deployment import ModelDeployment
    from edge_agent._enroll import find_config

    if state_dir is None:
        config = find_config(home)
        if not config.is_file():
            raise ConfigError(f"no model given and no config at {config}: give --model, --state-dir or --home")
        state_dir = load_agent_config(config, {}).state_dir
    deployed = ModelDeployment(state_dir).deployed()
    if deployed is None:
        raise ModelError(f"{state_dir}: no release deployed yet (genfl-server release; or give --model)")
    return deployed.path


def export(
    out: OnnxOut,
    state_dir: Annotated[Path, typer.Option(help="The agent's state folder (holds the current global model).")],
    format: FormatOption = ExportFormat.ONNX,
    int8: Int8Option = False,
    data: Annotated[
        Optional[str], typer.Option(help="Local data for the check/calibration (default: the agent's).")
    ] = None,
) -> None:
    """Export the device's current global model to ONNX, checked against PyTorch first (int8: calibrated on the
    board's own data)."""
    with exit_on_error():
        try:
            status = json.loads((state_dir / "status.json").read_text())
            model_id = status["model_id"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{state_dir}: no current model recorded in status.json ({exc})") from exc
        if data is None:
            data = json.loads((state_dir / "config.json").read_text())["data"]
        from edge_agent import with_channels
        from models import checkpoint_classes, get_spec, read_checkpoint
        from models._onnx import export_onnx

        blob = state_dir / "blobs" / str(model_id)
        model_name, state = read_checkpoint(blob)
        classes = checkpoint_classes(blob)  # the fleet's list, which the server put in the model it sent
        dataset = load_dataset(str(data))
        images = with_channels(dataset.train, get_spec(model_name).input_shape).images  # a grey board, say
        report = export_onnx(model_name, state, out, int8=int8, check_images=images[:1000],
                             calibration_images=images[:512],
                             classes=classes or dataset.classes)  # fmt: skip
        typer.echo(report.summary())

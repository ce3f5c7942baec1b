"""A checkpoint to an ONNX file (float or int8), written only if onnxruntime agrees with PyTorch: what
``genfl-server export`` and ``genfl-server release`` both do."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol import ConfigError, ModelError

__all__ = ["ExportedModel", "export_checkpoint", "latest_checkpoint"]

log = logging.getLogger("genfl.server")


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    model_name: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    int8: bool
    summary: str  # one line: what was written and how it agrees with PyTorch


def latest_checkpoint(state_dir: Path, round_number: int | None = None) -> Path:
    """The checkpoint of ``round_number`` in a server's state dir (the latest without one)."""
    folder = state_dir / "checkpoints"
    if round_number is not None:
        path = folder / f"round-{round_number:04d}.safetensors"
        if not path.is_file():
            raise ModelError(f"{state_dir}: no checkpoint of round {round_number}")
        return path
    found = sorted(folder.glob("round-*.safetensors"))
    if not found:
        raise ModelError(f"{state_dir}: no checkpoints yet")
    return found[-1]


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    int8: bool,
    model: str | None = None,
    calibration: str | None = None,
    say: Callable[[str], None] = log.info,
) -> ExportedModel:
    """Export ``checkpoint`` to ``out``; int8 is calibrated on ``calibration`` (a data spec: the synthetic pool,
    ``folder:POOL``, will do; digits for ``cnn-digits`` by default). ``say`` hears what it is doing."""
    from edge_agent import load_dataset, with_channels
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
        say(f"checking the float export on {len(check)} generated images (no --calibration)")
        calibration_images = None
    else:
        dataset = load_dataset(calibration)
        check = with_channels(dataset.test, shape).images[:1000]
        calibration_images = with_channels(dataset.train, shape).images[:512]
        names = classes or dataset.classes
    say(f"exporting {model_name} from {checkpoint} ({'int8' if int8 else 'fp32'}) ...")
    report = export_onnx(model_name, state, out, int8=int8, check_images=check,
                         calibration_images=calibration_images, classes=names)  # fmt: skip
    return ExportedModel(out, model_name, tuple(names or ()), (int(shape[0]), int(shape[1]), int(shape[2])), int8,
                         report.summary(str(checkpoint)))  # fmt: skip

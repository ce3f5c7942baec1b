"""Inference with an exported ONNX model: onnxruntime and pillow, no torch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol import DataError, ModelError

from ._data import IMAGE_SUFFIXES

__all__ = ["OnnxClassifier", "Prediction", "image_paths"]


@dataclass(frozen=True)
class Prediction:
    path: Path
    label: str
    probability: float


def image_paths(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the images inside (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    if not found:
        raise DataError("no images to predict")
    return found


class OnnxClassifier:
    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError("predict needs onnxruntime: pip install onnxruntime") from exc
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types for a bad file
            raise ModelError(f"{path}: not a usable ONNX model ({str(exc).splitlines()[0][:200]})") from exc
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(inputs) != 1 or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            described = [(i.name, i.shape) for i in inputs]
            raise ModelError(f"{path}: inputs {described} are not one (batch, channels, height, width) image tensor")
        self.input_name = inputs[0].name
        self.channels, self.height, self.width = (int(d) for d in shape[1:])
        if self.channels not in (1, 3):
            raise ModelError(f"{path}: the model takes {self.channels} channels; only 1 or 3 are images")
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.classes: list[str] = json.loads(props.get("genfl.classes", "[]"))
        except json.JSONDecodeError:
            self.classes = []

    def _load(self, path: Path, resize: bool = False) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                converted = image.convert("L" if self.channels == 1 else "RGB")
                if resize and converted.size != (self.width, self.height):
                    converted = converted.resize((self.width, self.height), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError, ValueError) as exc:  # ValueError: a decoder's "bad header"
            raise DataError(f"cannot read image {path}: {exc}") from exc
        if converted.size != (self.width, self.height):
            raise DataError(
                f"image {path} is {converted.size[0]}x{converted.size[1]}; the model takes {self.width}x{self.height}"
                " (--resize scales it)"
            )
        pixels = np.asarray(converted, dtype=np.float32) / 255.0
        return pixels[None, :, :] if self.channels == 1 else pixels.transpose(2, 0, 1)

    def _scores(self, inputs: np.ndarray, paths: list[Path]) -> np.ndarray:
        """The model's (images, classes) scores, or ModelError: it failed, or said NaN, inf or a bad shape."""
        try:
            logits = np.asarray(self.session.run(None, {self.input_name: inputs})[0], dtype=np.float64)
        except Exception as exc:  # onnxruntime's own error types
            raise ModelError(f"the model failed to run: {str(exc).splitlines()[0][:200]}") from exc
        if logits.ndim != 2 or len(logits) != len(paths):
            raise ModelError(f"the model's output has shape {logits.shape}, not (images, classes): it is broken")
        finite = np.isfinite(logits).all(axis=1)
        if not finite.all():
            bad = paths[int(np.flatnonzero(~finite)[0])]
            raise ModelError(f"the model's output for {bad} is not finite (NaN or inf): the model is broken")
        return logits

    def predict(self, paths: list[Path], batch: int = 64, *, resize: bool = False) -> list[Prediction]:
        """Predictions for every path; DataError at the first image that cannot be used (see ``predict_each``)."""
        results: list[Prediction] = []
        for outcome in self.predict_each(paths, batch, resize=resize):
            if isinstance(outcome, DataError):
                raise outcome
            results.append(outcome)
        return results

    def predict_each(
        self, paths: list[Path], batch: int = 64, *, resize: bool = False
    ) -> Iterator[Prediction | DataError]:
        """One outcome per path, in order: its prediction, or the DataError that says why the image cannot be
        used (the others go on). A model whose output is not finite is a ModelError: nothing it says is usable."""
        for start in range(0, len(paths), batch):
            outcomes: list[Prediction | DataError | None] = []
            loaded: list[tuple[int, Path, np.ndarray]] = []
            for path in paths[start : start + batch]:
                try:
                    loaded.append((len(outcomes), path, self._load(path, resize)))
                    outcomes.append(None)
                except DataError as exc:
                    outcomes.append(exc)
            if loaded:
                inputs = np.stack([pixels for _, _, pixels in loaded]).astype(np.float32)
                logits = self._scores(inputs, [path for _, path, _ in loaded])
                shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
                probabilities = shifted / shifted.sum(axis=1, keepdims=True)
                for (slot, path, _), row in zip(loaded, probabilities):
                    index = int(row.argmax())
                    label = self.classes[index] if index < len(self.classes) else str(index)
                    outcomes[slot] = Prediction(path, label, float(row[index]))
            for outcome in outcomes:
                assert outcome is not None
                yield outcome

"""Inference with an exported ONNX model: onnxruntime and pillow, no torch."""

from __future__ import annotations

import json
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

    def _load(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                converted = image.convert("L" if self.channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        if converted.size != (self.width, self.height):
            raise DataError(
                f"image {path} is {converted.size[0]}x{converted.size[1]}; the model takes {self.width}x{self.height}"
            )
        pixels = np.asarray(converted, dtype=np.float32) / 255.0
        return pixels[None, :, :] if self.channels == 1 else pixels.transpose(2, 0, 1)

    def predict(self, paths: list[Path], batch: int = 64) -> list[Prediction]:
        results: list[Prediction] = []
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            inputs = np.stack([self._load(p) for p in chunk]).astype(np.float32)
            logits = self.session.run(None, {self.input_name: inputs})[0]
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=1, keepdims=True)
            for path, row in zip(chunk, probabilities):
                index = int(row.argmax())
                label = self.classes[index] if index < len(self.classes) else str(index)
                results.append(Prediction(path, label, float(row[index])))
        return results

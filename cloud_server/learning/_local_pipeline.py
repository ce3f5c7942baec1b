"""``local-pipeline``: GenFL's synthetic samples from a text-to-image pipeline already on disk.

For an operator who has a generator (a Stable Diffusion checkpoint, a
fine-tuned one, a distilled one) saved with diffusers' ``save_pretrained``:
it is loaded with ``local_files_only=True``, so nothing is downloaded at run
time, prompted with the class names, and its images are resized to the
model's input. It learns nothing from the devices, so it is ready at once.

diffusers (and transformers, for the text encoder) are an optional extra:
``pip install 'genfl-edge[diffusion]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import models
from protocol import ConfigError, TensorDict

from ._generator import FitReport, Generator, Teachers

__all__ = ["LocalPipelineGenerator"]

PROMPT = "a photo of a {name}"


_LIBRARIES = ("diffusers", "transformers")  # where a saved pipeline's components may come from


def check_pipeline_folder(folder: Path, diffusers: Any) -> None:
    """Refuse a pipeline folder that would run code of its own when loaded: any ``.py`` file in it (diffusers
    imports a custom pipeline or component from the folder), a pipeline class diffusers does not ship, or a
    component from a library other than diffusers and transformers."""
    import json

    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ConfigError(f"{folder} holds no saved diffusers pipeline (no model_index.json)")
    code = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    if code:
        raise ConfigError(f"{folder} holds Python files ({', '.join(code[:3])}); a pipeline folder must hold none")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{index_path} is not readable JSON ({exc})") from exc
    if not isinstance(index, dict):
        raise ConfigError(f"{index_path} is not a JSON object")
    name = index.get("_class_name")
    if not isinstance(name, str) or not isinstance(getattr(diffusers, name, None), type):
        raise ConfigError(f"{index_path}: pipeline class {name!r} is not one diffusers ships (custom code refused)")
    for component, value in index.items():
        if component.startswith("_") or not isinstance(value, list) or value == [None, None]:
            continue  # a setting, or a component saved as absent (safety_checker=None)
        if len(value) != 2 or value[0] not in _LIBRARIES:
            raise ConfigError(
                f"{index_path}: component {component} comes from {value!r}, not {' or '.join(_LIBRARIES)}"
            )


class LocalPipelineGenerator(Generator):
    name = "local-pipeline"

    def __init__(
        self,
        model_name: str,
        path: str | Path,
        class_names: tuple[str, ...],
        *,
        device: str = "cpu",
        inference_steps: int = 20,
        prompt: str = PROMPT,
        batch_size: int = 16,
    ) -> None:
        spec = models.get_spec(model_name)
        if len(class_names) != spec.num_classes:
            raise ConfigError(
                f"the local pipeline needs one name per class ({spec.num_classes}), got {len(class_names)}"
            )
        folder = Path(path)
        try:
            import diffusers
        except ImportError as exc:
            raise ConfigError(
                "the local-pipeline generator needs diffusers: pip install 'genfl-edge[diffusion]'"
            ) from exc
        check_pipeline_folder(folder, diffusers)
        try:  # weights from safetensors only (no pickle), nothing downloaded, no code from the folder
            self.pipeline: Any = diffusers.DiffusionPipeline.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
        except Exception as exc:  # a loader raises anything (UnpicklingError, safetensors', torch's): one line
            raise ConfigError(f"cannot load the pipeline in {folder}: {type(exc).__name__}: {exc}") from exc
        self.pipeline.to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.input_shape = spec.input_shape
        self.class_names = class_names
        self.device = device
        self.inference_steps = inference_steps
        self.prompt = prompt
        self.batch_size = batch_size

    @property
    def ready(self) -> bool:
        return True

    def fit(self, teachers: Teachers) -> tuple[TensorDict, FitReport]:
        return teachers.global_state, FitReport(0.0, 0, float("nan"), None)

    def _to_model_input(self, images: np.ndarray) -> np.ndarray:
        """(N, H', W', 3) floats in [0, 1] -> uint8 (N, C, H, W) at the model's size and channels."""
        channels, height, width = self.input_shape
        tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        if channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            tensor = (tensor * weights).sum(1, keepdim=True)
        elif channels != 3:
            raise ConfigError(f"the local pipeline makes RGB images; the model takes {channels} channels")
        return (tensor.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()

    @torch.no_grad()
    def sample(self, labels: np.ndarray, seed: int) -> np.ndarray:
        out = [np.zeros((0, *self.input_shape), dtype=np.uint8)]
        generator = torch.Generator(device="cpu").manual_seed(seed)
        for start in range(0, len(labels), self.batch_size):
            part = labels[start : start + self.batch_size]
            prompts = [self.prompt.format(name=self.class_names[int(label)]) for label in part]
            result = self.pipeline(
                prompt=prompts,
                num_inference_steps=self.inference_steps,
                generator=generator,
                output_type="np",
            )
            out.append(self._to_model_input(np.asarray(result.images)))
        return np.concatenate(out)

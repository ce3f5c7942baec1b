"""Models by name, each a ``ConvNetConfig``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from protocol import ModelError, TensorDict

from ._convnet import POOL, ConvNet, ConvNetConfig
from ._mlp import MLP, MLPConfig

__all__ = ["MODELS", "ModelSpec", "build_model", "get_spec", "load_state", "model_state", "default_model_for"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    num_classes: int
    build: Callable[[], nn.Module]
    summary: str
    augment: str = "none"  # what local training applies by default: none, or crop-flip (natural images)


# scikit-learn's 8x8 grey handwritten digits: 3 blocks
CNN_DIGITS = ConvNetConfig(in_channels=1, num_classes=10, width=16, blocks=(1, 2, POOL, 4), mean=(0.3,), std=(0.4,))
# 3x32x32 natural images (CIFAR-10 sized): 6 blocks, ~290k parameters
CNN_SMALL = ConvNetConfig(
    in_channels=3,
    num_classes=10,
    width=32,
    blocks=(1, 1, POOL, 2, 2, POOL, 4, 4),
    mean=(0.49, 0.48, 0.45),
    std=(0.25, 0.24, 0.26),
)
# the digits again, for client-level DP: 64-32-10, 2,410 parameters and no BatchNorm (see ``_mlp``)
MLP_DIGITS = MLPConfig(input_shape=(1, 8, 8), num_classes=10, hidden=32, mean=(0.3,), std=(0.4,))

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("cnn-digits", (1, 8, 8), 10, lambda: ConvNet(CNN_DIGITS),
                  "3 conv-bn-relu blocks for 1x8x8 digits"),
        ModelSpec("cnn-small", (3, 32, 32), 10, lambda: ConvNet(CNN_SMALL),
                  "6 conv-bn-relu blocks for 3x32x32 images", augment="crop-flip"),
        ModelSpec("mlp-digits", (1, 8, 8), 10, lambda: MLP(MLP_DIGITS),
                  "a 64-32-10 MLP without BatchNorm for 1x8x8 digits (client-level DP)"),
    )
}  # fmt: skip


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def default_model_for(input_shape: tuple[int, int, int]) -> str:
    """The registered model whose input fits a data set's sample shape."""
    for spec in MODELS.values():
        if spec.input_shape == input_shape:
            return spec.name
    raise ModelError(f"no registered model takes input {input_shape}; pass --model")


def build_model(name: str, seed: int | None = None) -> nn.Module:
    """A fresh model; with ``seed`` its initial weights are reproducible."""
    spec = get_spec(name)
    if seed is None:
        return spec.build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build()


def model_state(model: nn.Module) -> TensorDict:
    """The model's state dict as numpy arrays (float32 / int64), detached copies."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in model.state_dict().items()}


def load_state(model: nn.Module, state: TensorDict) -> None:
    """Load numpy arrays into ``model``; names, shapes and dtypes must match exactly."""
    expected = model.state_dict()
    if set(expected) != set(state):
        missing = sorted(set(expected) - set(state))[:3]
        extra = sorted(set(state) - set(expected))[:3]
        raise ModelError(f"state does not fit the model (missing {missing}, unexpected {extra})")
    tensors = {}
    for name, reference in expected.items():
        array = state[name]
        if tuple(array.shape) != tuple(reference.shape):
            raise ModelError(f"tensor {name!r} has shape {tuple(array.shape)}, model wants {tuple(reference.shape)}")
        if np.dtype(array.dtype) != np.dtype(str(reference.dtype).removeprefix("torch.")):
            raise ModelError(f"tensor {name!r} has dtype {array.dtype}, model wants {reference.dtype}")
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
    model.load_state_dict(tensors)


def state_evaluator(
    name: str, images: np.ndarray, labels: np.ndarray, torch_device: str = "cpu"
) -> Callable[[TensorDict], tuple[float, float]]:
    """``state -> (loss, accuracy)`` of model ``name`` with that state on a fixed test set; one model is
    built here and reused for every call."""
    from ._training import evaluate

    model = build_model(name).to(torch_device)

    def score(state: TensorDict) -> tuple[float, float]:
        load_state(model.cpu(), state)
        model.to(torch_device)
        result = evaluate(model, images, labels)
        return result.loss, result.accuracy

    return score

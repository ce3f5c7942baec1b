"""Quantization-aware training with the core fake-quant ops (no torch.ao, no deprecation warnings).

While a model trains under :func:`fake_quantized`, every Conv2d/Linear weight is
seen through int8 per-channel symmetric fake quantization and every ReLU output
through int8 per-tensor affine fake quantization (ranges tracked by an EMA),
with straight-through gradients: the float master weights learn to sit well on
the int8 grid that the ONNX int8 export (QDQ) uses. On exit the model is plain
again (same state-dict keys), so what travels and what the server aggregates
does not change. Conv-BatchNorm folding happens at export, where onnxruntime
fuses them before quantizing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["fake_quantized"]


class _WeightFakeQuant(nn.Module):
    """int8 symmetric, one scale per output channel."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.detach().reshape(weight.shape[0], -1)
        scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-8).to(torch.float32)
        zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -128, 127)


class _ActivationFakeQuant(nn.Module):
    """int8 affine over the EMA of the observed [min, max] (training only)."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.low: float | None = None
        self.high: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_t, high_t = torch.aminmax(x.detach())  # one pass over the activations
        low, high = float(low_t), float(high_t)
        if self.low is None or self.high is None:
            self.low, self.high = low, high
        else:
            self.low += self.momentum * (low - self.low)
            self.high += self.momentum * (high - self.high)
        lo, hi = min(self.low, 0.0), max(self.high, 0.0)
        scale = max((hi - lo) / 255.0, 1e-8)
        zero_point = round(-128 - lo / scale)
        return torch.fake_quantize_per_tensor_affine(x, scale, max(-128, min(127, zero_point)), -128, 127)


@contextmanager
def fake_quantized(model: nn.Module) -> Iterator[nn.Module]:
    """Train ``model`` quantization-aware inside this block; it is a plain float model again after."""
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = []
    for module in weighted:
        parametrize.register_parametrization(module, "weight", _WeightFakeQuant())
    for relu in model.modules():
        if isinstance(relu, nn.ReLU):
            quantizer = _ActivationFakeQuant()
            hooks.append(relu.register_forward_hook(lambda mod, inputs, output, q=quantizer: q(output)))
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for module in weighted:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)

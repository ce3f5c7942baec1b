"""Pieces every model family shares: input normalisation and conv-bn-relu blocks."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Maps pixels in [0, 1] to zero mean / unit std per channel.

    The constants are non-persistent buffers: part of the graph (and of the
    ONNX export) but not of the state dict, so they never travel.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias, BN has one) -> BatchNorm -> ReLU; keeps H and W."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )

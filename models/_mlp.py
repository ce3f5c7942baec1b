"""A small multilayer perceptron: flattened pixels, one hidden ReLU layer, the logits. No BatchNorm.

The model for client-level differential privacy. DP-FedAvg's noise has one
standard deviation per parameter, so its share of an update grows with the
square root of the parameter count: at epsilon 8 on 100 devices it buries a
24k-parameter CNN's update and leaves a 2.4k-parameter MLP's readable. And a
model without BatchNorm has no running statistics, which under DP would be
noised like weights (a running variance can be pushed below zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._common import Normalize


@dataclass(frozen=True)
class MLPConfig:
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    num_classes: int
    hidden: int
    mean: tuple[float, ...]  # per-channel input statistics the model normalises pixels in [0, 1] by
    std: tuple[float, ...]


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        channels, height, width = config.input_shape
        self.normalize = Normalize(config.mean, config.std)
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * height * width, config.hidden), nn.ReLU(inplace=True)
        )  # (N, hidden)
        self.classifier = nn.Linear(config.hidden, config.num_classes)  # (N, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))

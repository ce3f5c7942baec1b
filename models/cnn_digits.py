"""``cnn-digits``: a tiny CNN for scikit-learn's 8x8 grey handwritten digits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._common import Normalize, conv_bn_relu


@dataclass(frozen=True)
class CnnDigitsConfig:
    in_channels: int = 1
    image_size: int = 8
    num_classes: int = 10
    width: int = 16


class CnnDigits(nn.Module):
    def __init__(self, config: CnnDigitsConfig) -> None:
        super().__init__()
        w = config.width
        self.normalize = Normalize((0.3,), (0.4,))
        self.features = nn.Sequential(
            conv_bn_relu(config.in_channels, w),  # (N, w, 8, 8)
            conv_bn_relu(w, 2 * w),  # (N, 2w, 8, 8)
            nn.MaxPool2d(2),  # (N, 2w, 4, 4)
            conv_bn_relu(2 * w, 4 * w),  # (N, 4w, 4, 4)
            nn.AdaptiveAvgPool2d(1),  # (N, 4w, 1, 1)
            nn.Flatten(),  # (N, 4w)
        )
        self.classifier = nn.Linear(4 * w, config.num_classes)  # (N, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))

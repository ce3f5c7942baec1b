"""``cnn-small``: a VGG-style CNN for 3x32x32 images (CIFAR-10 sized), ~290k parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._common import Normalize, conv_bn_relu


@dataclass(frozen=True)
class CnnSmallConfig:
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    width: int = 32


class CnnSmall(nn.Module):
    def __init__(self, config: CnnSmallConfig) -> None:
        super().__init__()
        w = config.width
        self.normalize = Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
        self.features = nn.Sequential(
            conv_bn_relu(config.in_channels, w),  # (N, w, 32, 32)
            conv_bn_relu(w, w),  # (N, w, 32, 32)
            nn.MaxPool2d(2),  # (N, w, 16, 16)
            conv_bn_relu(w, 2 * w),  # (N, 2w, 16, 16)
            conv_bn_relu(2 * w, 2 * w),  # (N, 2w, 16, 16)
            nn.MaxPool2d(2),  # (N, 2w, 8, 8)
            conv_bn_relu(2 * w, 4 * w),  # (N, 4w, 8, 8)
            conv_bn_relu(4 * w, 4 * w),  # (N, 4w, 8, 8)
            nn.AdaptiveAvgPool2d(1),  # (N, 4w, 1, 1)
            nn.Flatten(),  # (N, 4w)
        )
        self.classifier = nn.Linear(4 * w, config.num_classes)  # (N, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))

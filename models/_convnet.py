"""The CNN family every registered model belongs to: VGG-style conv-bn-relu blocks, max-pools between
stages, global average pooling and one linear classifier. A model is a ``ConvNetConfig``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._common import Normalize, conv_bn_relu

POOL = "pool"  # a 2x2 max-pool in ``ConvNetConfig.blocks``


@dataclass(frozen=True)
class ConvNetConfig:
    in_channels: int
    num_classes: int
    width: int  # the first block's channels; the others are multiples of it
    blocks: tuple[int | str, ...]  # each block's channels as a multiple of ``width``, or POOL
    mean: tuple[float, ...]  # per-channel input statistics the model normalises pixels in [0, 1] by
    std: tuple[float, ...]


class ConvNet(nn.Module):
    def __init__(self, config: ConvNetConfig) -> None:
        super().__init__()
        self.normalize = Normalize(config.mean, config.std)
        layers: list[nn.Module] = []
        channels = config.in_channels
        for block in config.blocks:
            if block == POOL:
                layers.append(nn.MaxPool2d(2))  # halves H and W
            elif isinstance(block, int) and block > 0:
                layers.append(conv_bn_relu(channels, block * config.width))  # keeps H and W
                channels = block * config.width
            else:
                raise ValueError(f"a block is a positive channel multiple or {POOL!r}, got {block!r}")
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (N, channels)
        self.classifier = nn.Linear(channels, config.num_classes)  # (N, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))

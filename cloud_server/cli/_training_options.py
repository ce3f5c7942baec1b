"""The strategy and training options ``simulate`` and ``serve`` share (typed once, used by both commands); their
defaults are StrategyConfig's."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cloud_server._robust import Aggregation
from cloud_server._strategy import StrategyConfig, StrategyName
from protocol import Augmentation, Codec

__all__ = [
    "S",
    "AggregateOption",
    "AugmentOption",
    "BatchSize",
    "CodecOption",
    "Fraction",
    "LearningRate",
    "LocalEpochs",
    "Momentum",
    "Mu",
    "Qat",
    "RoundTimeout",
    "StrategyOption",
    "Trim",
    "WeightDecay",
]

S = StrategyConfig()
StrategyOption = Annotated[StrategyName, typer.Option("--strategy", help="How rounds train and combine.")]
Mu = Annotated[float, typer.Option("--mu", help="FedProx proximal weight.")]
LocalEpochs = Annotated[int, typer.Option(help="Local epochs per round.")]
BatchSize = Annotated[int, typer.Option(help="Local batch size.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Local SGD learning rate.")]
Fraction = Annotated[float, typer.Option(help="Share of online devices picked each round.")]
RoundTimeout = Annotated[
    float, typer.Option("--round-timeout", help="Seconds before stragglers are left out of a round.")
]
CodecOption = Annotated[Codec, typer.Option("--codec", help="How devices send updates.")]
Qat = Annotated[
    bool, typer.Option("--qat/--no-qat", help="Devices train int8 quantization-aware (default) or in float.")
]
AggregateOption = Annotated[
    Aggregation, typer.Option("--aggregate", help="FedAvg's weighted mean or a rule robust to faulty devices.")
]
Trim = Annotated[float, typer.Option(help="Share trimmed from each end by trimmed-mean.")]
Momentum = Annotated[float, typer.Option(help="Local SGD momentum.")]
WeightDecay = Annotated[float, typer.Option(help="Local SGD weight decay (L2).")]
AugmentOption = Annotated[
    Optional[Augmentation],
    typer.Option("--augment", help="Local augmentation: none or crop-flip (default: the model's own choice)."),
]

"""Model registry, definitions and the shared train/evaluate loop. Knows nothing of MQTT."""

from ._checkpoint import checkpoint_classes, read_checkpoint
from ._qat import fake_quantized
from ._registry import (
    MODELS,
    ModelSpec,
    build_model,
    default_model_for,
    get_spec,
    load_state,
    model_state,
    state_evaluator,
)
from ._style import STYLE_GAP_NATS, colour_gap, colours_like, restyled
from ._training import (
    EpochResult,
    SyntheticMix,
    augment,
    evaluate,
    predict_logits,
    to_float,
    train_one_epoch,
)

__all__ = [
    "MODELS",
    "EpochResult",
    "ModelSpec",
    "build_model",
    "default_model_for",
    "evaluate",
    "fake_quantized",
    "get_spec",
    "load_state",
    "model_state",
    "predict_logits",
    "checkpoint_classes",
    "read_checkpoint",
    "state_evaluator",
    "SyntheticMix",
    "restyled",
    "STYLE_GAP_NATS",
    "colour_gap",
    "colours_like",
    "augment",
    "to_float",
    "train_one_epoch",
]

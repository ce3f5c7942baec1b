import numpy as np
import torch

import models
from edge_agent import load_dataset
from edge_agent._training import train_local
from protocol import TrainConfig


def test_fake_quantized_training_leaves_a_plain_model_with_the_same_keys() -> None:
    model = models.build_model("cnn-digits", seed=0)
    keys = set(model.state_dict())
    x = torch.rand(8, 1, 8, 8)
    with models.fake_quantized(model) as quantized:
        quantized.train()
        seen = quantized(x)
        # inside: weights pass through an int8 grid, one scale per output channel
        weight = quantized.classifier.weight
        scale = weight.detach().abs().amax(dim=1, keepdim=True) / 127
        assert torch.allclose(weight / scale, torch.round(weight / scale), atol=1e-3)
    assert set(model.state_dict()) == keys  # (parametrize re-registers the weight last; names are what count)
    assert seen.shape == (8, 10)


def test_qat_training_learns_as_well_as_float() -> None:
    data = load_dataset("digits")
    start = models.model_state(models.build_model("cnn-digits", seed=0))
    config = {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.1, "seed": 3}
    float_run = train_local("cnn-digits", start, data.train, TrainConfig(**config, qat=False))
    qat_run = train_local("cnn-digits", start, data.train, TrainConfig(**config, qat=True))
    assert qat_run.delta.keys() == float_run.delta.keys()
    assert all(np.isfinite(v).all() for v in qat_run.delta.values())
    # two different trainings (the int8 grid changed the steps), both of which learned
    assert any(not np.array_equal(qat_run.delta[k], float_run.delta[k]) for k in float_run.delta)
    assert float_run.accuracy > 0.8
    assert qat_run.accuracy >= float_run.accuracy - 0.05

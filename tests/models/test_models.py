import numpy as np
import pytest
import torch

import models
from protocol import ModelError


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_registered_models_build_small_and_predict(name: str) -> None:
    spec = models.get_spec(name)
    model = models.build_model(name, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 1_000_000
    # the CNN family normalises with BatchNorm; the DP model has no running statistics to noise
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == name.startswith("cnn-")
    logits = model.eval()(torch.rand(3, *spec.input_shape))
    assert logits.shape == (3, spec.num_classes)


def test_seed_makes_initial_weights_reproducible() -> None:
    a = models.model_state(models.build_model("cnn-digits", seed=7))
    b = models.model_state(models.build_model("cnn-digits", seed=7))
    c = models.model_state(models.build_model("cnn-digits", seed=8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_load_state_refuses_a_state_that_does_not_fit() -> None:
    model = models.build_model("cnn-digits")
    state = models.model_state(model)
    state["classifier.weight"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ModelError, match=r"classifier\.weight.*shape"):
        models.load_state(model, state)
    with pytest.raises(ModelError, match="unknown model"):
        models.get_spec("resnet-9000")


def test_one_epoch_learns_a_separable_toy_task() -> None:
    # Prepare: class 0 = dark images, class 1 = bright images
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    images = (labels[:, None, None, None] * 200 + rng.integers(0, 40, (256, 1, 8, 8))).astype(np.uint8)
    model = models.build_model("cnn-digits", seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = models.evaluate(model, images, labels)
    # Execute
    for _ in range(3):
        models.train_one_epoch(model, images, labels, optimizer, batch_size=32, rng=rng)
    after = models.evaluate(model, images, labels)
    # Assert
    assert after.loss < before.loss
    assert after.accuracy > 0.95

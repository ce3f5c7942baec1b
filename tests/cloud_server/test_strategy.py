import numpy as np
import pytest

from cloud_server import FedAvg, FedProx, StrategyConfig, derive_seed
from protocol import ConfigError


def test_fedavg_picks_everyone_with_per_device_seeds() -> None:
    configs = FedAvg(StrategyConfig(seed=1)).configure_round(3, ["b", "a", "c"])
    assert list(configs) == ["a", "b", "c"]
    assert len({c.seed for c in configs.values()}) == 3
    assert all(c.prox_mu == 0.0 for c in configs.values())
    assert configs["a"].seed == derive_seed("train", 1, 3, "a")


def test_fraction_samples_reproducibly() -> None:
    strategy = FedAvg(StrategyConfig(fraction=0.3, seed=5))
    devices = [f"d{i}" for i in range(10)]
    first = strategy.select(2, devices)
    assert len(first) == 3
    assert strategy.select(2, list(reversed(devices))) == first
    assert any(strategy.select(r, devices) != first for r in range(3, 10))


def test_fedprox_sends_mu() -> None:
    configs = FedProx(StrategyConfig(prox_mu=0.1)).configure_round(1, ["a"])
    assert configs["a"].prox_mu == pytest.approx(0.1)


def test_unknown_strategy_and_bad_fraction_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="unknown strategy"):
        StrategyConfig(strategy="fedmagic")
    with pytest.raises(ConfigError, match="fraction"):
        StrategyConfig(fraction=0.0)


def test_fedprox_mu_holds_the_local_model_near_the_global_one() -> None:
    # Prepare: one device's data, the same start and steps, with and without the proximal term
    import models
    from edge_agent import load_dataset
    from edge_agent._training import train_local
    from protocol import TrainConfig

    data = load_dataset("digits").train
    start = models.model_state(models.build_model("cnn-digits", seed=0))
    settings = {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.1, "seed": 1, "qat": False}

    def moved(mu: float) -> float:
        delta = train_local("cnn-digits", start, data, TrainConfig(**settings, prox_mu=mu)).delta
        return float(np.sqrt(sum(np.sum(np.square(v)) for v in delta.values() if v.dtype.kind == "f")))

    # Execute
    plain, held = moved(0.0), moved(1.0)
    # Assert: mu pulls every step back towards the global model, so the update is smaller
    assert held < 0.9 * plain


def test_every_training_setting_reaches_the_task() -> None:
    config = StrategyConfig(momentum=0.5, weight_decay=0.001, augment="crop-flip", learning_rate=0.02)
    task = FedAvg(config).configure_round(1, ["a"])["a"]
    assert (task.momentum, task.weight_decay, task.augment, task.learning_rate) == (0.5, 0.001, "crop-flip", 0.02)

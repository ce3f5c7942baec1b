"""GenFL against FedAvg on the pathological split, and the strategies' contract with the coordinator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cloud_server import StrategyConfig, make_strategy
from cloud_server._genfl import AigcOnly, GenFL, KeptUpdates, synthetic_weight
from cloud_server._simulation import SimulationConfig, run_simulation
from cloud_server._strategy import GenflConfig
from protocol import ConfigError, TrainConfig, decode_synthetic

PATHOLOGICAL = dict(dataset="digits", devices=10, partition="shards", classes_per_device=2, rounds=10, seed=0)


def test_genfl_beats_fedavg_by_three_points_on_two_classes_per_device() -> None:
    started = time.perf_counter()
    fedavg = run_simulation(SimulationConfig(strategy="fedavg", **PATHOLOGICAL))  # type: ignore[arg-type]
    genfl = run_simulation(SimulationConfig(strategy="genfl", **PATHOLOGICAL))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    assert fedavg.final_accuracy is not None and genfl.final_accuracy is not None
    assert genfl.final_accuracy >= fedavg.final_accuracy + 0.03, (fedavg.final_accuracy, genfl.final_accuracy)
    # the synthetic data came after the warm-up round, within each device's budget, and cost generator time
    rounds = genfl.rounds
    assert rounds[0].synthetic_bytes == 0 and all(r.synthetic_bytes > 0 for r in rounds[1:])
    assert all(r.synthetic_bytes <= 10 * (1024 * 1024 + 4096) for r in rounds)
    assert all(r.generator_s > 0 for r in rounds)
    print(f"fedavg {fedavg.final_accuracy:.3f} genfl {genfl.final_accuracy:.3f} in {elapsed:.1f} s")


def test_the_synthetic_weight_decays_after_the_warm_up() -> None:
    config = GenflConfig(warmup_rounds=2, synthetic_weight=1.0, synthetic_decay=0.5)
    assert [synthetic_weight(config, r) for r in (3, 4, 5)] == [1.0, 0.5, 0.25]


def _bound(name: str, **genfl: object) -> GenFL | AigcOnly:
    strategy = make_strategy(name, StrategyConfig(genfl=GenflConfig(**genfl)))  # type: ignore[arg-type]
    strategy.bind("cnn-digits")
    assert isinstance(strategy, (GenFL, AigcOnly))
    return strategy


def test_genfl_sends_nothing_before_its_generator_learned_then_tailored_batches() -> None:
    import models

    strategy = _bound("genfl", generator_steps=3, generator_batch=8, synthetic_budget_kb=4)
    configs = {"a": TrainConfig(), "b": TrainConfig()}
    devices = {"a": (100, (50.0, 50.0) + (0.0,) * 8), "b": (100, None)}
    same, batches = strategy.synthetic_batches(1, configs, devices)
    assert batches == {} and same == configs
    state = models.model_state(models.build_model("cnn-digits", seed=0))
    updates = KeptUpdates(state)
    for key in ("a", "b"):
        updates.add({n: np.zeros_like(v) for n, v in state.items()}, 10, key=key)
    strategy.aggregate_round(state, updates)
    configs, batches = strategy.synthetic_batches(2, configs, devices)
    a = decode_synthetic(batches["a"], (1, 8, 8), 10)
    b = decode_synthetic(batches["b"], (1, 8, 8), 10)
    assert set(np.unique(a.labels)) == set(range(2, 10))  # only the classes device a lacks
    assert set(np.unique(b.labels)) == set(range(10))  # no counts shared: every class
    assert len(batches["b"]) <= 4 * 1024 + 1024 and configs["a"].synthetic_weight == 1.0
    assert strategy.round_stats()[1] == {"a": len(batches["a"]), "b": len(batches["b"])}


def test_aigc_only_ignores_the_device_updates() -> None:
    import models

    strategy = _bound("aigc-only", generator_steps=2, generator_batch=8, server_steps=2)
    state = models.model_state(models.build_model("cnn-digits", seed=0))
    updates = KeptUpdates(state)
    huge = {n: np.full_like(v, 100.0) if v.dtype.kind == "f" else v * 0 for n, v in state.items()}
    updates.add(huge, 10, key="a")
    new = strategy.aggregate_round(state, updates)
    assert all(np.abs(new[n] - state[n]).max() < 50 for n in state if state[n].dtype.kind == "f")
    assert strategy.synthetic_batches(2, {"a": TrainConfig()}, {"a": (10, None)})[1] == {}


def test_bad_genfl_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        GenflConfig(generator="stable-diffusion-from-the-internet")
    with pytest.raises(ConfigError):
        GenflConfig(generator="local-pipeline")  # needs a path
    with pytest.raises(ConfigError):
        GenflConfig(synthetic_decay=0.0)

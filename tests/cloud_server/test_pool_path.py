"""GenFL from a pool: what each device is sent, how the fleet's model judges the pool, what the operator reads."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models
from cloud_server import StrategyConfig, make_strategy
from cloud_server.learning._aggregation import WeightedDeltaSum
from cloud_server.learning._genfl import GenFL
from cloud_server.learning._genfl_config import GenflConfig
from cloud_server.learning._strategy import DeviceInfo, FitResult, RoundPlan, RoundResults
from protocol import ConfigError, TrainConfig, decode_synthetic

DIGITS = tuple(str(d) for d in range(10))


def _pool(folder: Path, per_class: int = 30, classes: tuple[str, ...] = DIGITS) -> Path:
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = np.full((8, 8), 8 * k, dtype=np.uint8)
            pixels[0, 0] = 20 * index  # every image of the pool differs from every other
            Image.fromarray(pixels).save(folder / name / f"{k:03d}.png")
    return folder


def _strategy(pool: Path, **genfl: object) -> GenFL:
    config = GenflConfig(generator="pool", synthetic_pool=str(pool), synthetic_budget_kb=2, **genfl)  # type: ignore[arg-type]
    strategy = make_strategy(StrategyConfig(strategy="genfl", genfl=config), model_name="cnn-digits", classes=DIGITS)
    assert isinstance(strategy, GenFL)
    return strategy


STATE = models.model_state(models.build_model("cnn-digits", seed=0))


def _plan(strategy: GenFL, number: int, devices: dict[str, DeviceInfo]) -> RoundPlan:
    return strategy.configure_synthetic(number, STATE, {d: TrainConfig() for d in devices}, devices)


def _evaluated(strategy: GenFL, number: int, device_accuracy: float) -> None:
    fit = FitResult(num_samples=10, train_loss=0.1, train_accuracy=0.9, eval_accuracy=device_accuracy)
    strategy.aggregate_evaluate(RoundResults(number, WeightedDeltaSum({}), {"a": fit}))


def test_each_device_gets_distinct_images_of_the_classes_it_lacks_from_the_first_round(tmp_path: Path) -> None:
    strategy = _strategy(_pool(tmp_path))
    held = (30.0,) * 5 + (0.0,) * 5  # holds 0-4, lacks 5-9
    plan = _plan(strategy, 1, {"a": DeviceInfo(150, held), "b": DeviceInfo(150, held)})
    configs, blobs = plan.configs, plan.synthetic
    batches = {d: decode_synthetic(b, (1, 8, 8), 10) for d, b in blobs.items()}
    assert set(batches) == {"a", "b"} and configs["a"].synthetic_weight == 1.0  # a pool's largest weight
    assert configs["a"].synthetic_restyle == "real"  # a pool's images restyle half of each device's own
    for batch in batches.values():
        assert set(batch.labels.tolist()) == {5, 6, 7, 8, 9}
        assert len({img.tobytes() for img in batch.images}) == len(batch)  # no image twice in one batch
        assert len(batch) * 72 <= 2 * 1024  # within the byte budget
    assert not np.array_equal(batches["a"].images, batches["b"].images)  # each device its own draw
    assert plan.metrics["sent"] and plan.metrics["images"] == sum(len(b) for b in batches.values())


def test_the_fleets_model_draws_the_images_it_recognises_more_and_the_weight_follows_the_pools_quality(
    tmp_path: Path,
) -> None:
    strategy = _strategy(_pool(tmp_path), synthetic_weight=1.0)
    state = models.model_state(models.build_model("cnn-digits", seed=0))
    strategy.current_global = state
    scores = strategy._score_pool(2)
    assert scores is not None and set(scores) == set(range(10)) and all(len(s) == 30 for s in scores.values())
    # Before the devices' reports there is no evidence: the configured weight
    assert strategy.pool_quality(3) is None and strategy._weight(3) == 1.0
    # The model recognised 28% of the pool and 55% of the devices' own data: (0.28 - 0.1) / (0.55 - 0.1) = 0.4
    strategy.pool_recognised[2] = 0.28
    _evaluated(strategy, 2, 0.55)
    assert strategy.pool_quality(3) == pytest.approx(0.4)
    assert strategy._weight(3) == pytest.approx(0.4)
    # A model no better than chance on the devices' data or the pool says nothing about the pool
    _evaluated(strategy, 3, 0.12)
    strategy.pool_recognised[3] = 0.11
    assert strategy.pool_quality(4) is None
    # One that knows the devices' data but not the pool's images: they earn nothing
    _evaluated(strategy, 4, 0.40)
    strategy.pool_recognised[4] = 0.10
    assert strategy.pool_quality(5) == 0.0 and strategy._weight(5) == 0.0


def test_a_diverged_global_model_scores_no_pool_image_and_leaves_the_scores_it_had(tmp_path: Path) -> None:
    # Prepare: scores from a sound model, then a model whose weights went NaN (as DP noise can make one)
    strategy = _strategy(_pool(tmp_path))
    strategy.current_global = STATE
    sound = strategy._score_pool(2)
    assert sound is not None
    strategy.current_global = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in STATE.items()}
    # Execute: no numpy warning (the suite makes warnings errors), no NaN score
    scores = strategy._score_pool(3)
    # Assert: the images keep the scores the sound model gave; the broken model recognised nothing
    assert scores is not None and all(np.isfinite(s).all() for s in scores.values())
    assert all(np.array_equal(scores[label], sound[label]) for label in sound)
    assert strategy.pool_recognised[3] == 0.0
    fresh = _strategy(_pool(tmp_path / "other"))
    fresh.current_global = strategy.current_global
    unseen = fresh._score_pool(1)  # no image ever scored: every score is chance
    assert unseen is not None and all(np.all(s == 0.1) for s in unseen.values())


def test_a_pool_may_lack_classes_but_a_folder_the_fleet_does_not_know_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lacking = _pool(tmp_path / "some", classes=DIGITS[:8])
    strategy = _strategy(lacking)
    with caplog.at_level(logging.WARNING, logger="genfl.server"):
        blobs = _plan(strategy, 1, {"a": DeviceInfo(100, (50.0, 50.0) + (0.0,) * 8)}).synthetic
    assert "holds no images of 8, 9" in caplog.text
    assert set(decode_synthetic(blobs["a"], (1, 8, 8), 10).labels.tolist()) == set(range(2, 8))
    foreign = _pool(tmp_path / "foreign", classes=(*DIGITS, "ten"))
    with pytest.raises(ConfigError, match="'ten', which is not one of the fleet's 10 classes"):
        _plan(_strategy(foreign), 1, {"a": DeviceInfo(100)})


def test_every_round_says_what_it_sent_or_why_it_ran_as_fedavg(caplog: pytest.LogCaptureFixture) -> None:
    config = StrategyConfig(strategy="genfl", genfl=GenflConfig(generator_steps=1, generator_batch=4))
    strategy = make_strategy(config, model_name="cnn-digits", classes=DIGITS)
    assert isinstance(strategy, GenFL)
    with caplog.at_level(logging.INFO, logger="genfl.server"):
        _plan(strategy, 1, {"a": DeviceInfo(10)})
        report = _plan(strategy, 2, {"a": DeviceInfo(10)}).metrics
    assert "round 1: plain FedAvg, no synthetic data: warm-up round" in caplog.text
    assert "round 2: plain FedAvg, no synthetic data: the data-free generator has not learned" in caplog.text
    assert report["sent"] is False and report["source"] == "data-free"


def test_a_restarted_server_keeps_the_pool_quality_its_rounds_reported(tmp_path: Path) -> None:
    strategy = _strategy(_pool(tmp_path), synthetic_weight=1.0)
    strategy.restore([{"round": 3, "pool_quality": 0.2}, {"round": 4, "pool_quality": None}, {"round": 5}])
    assert strategy.pool_quality(6) == 0.2 and strategy._weight(6) == pytest.approx(0.2)
    strategy.pool_recognised[6] = 0.46  # then what the new server measures counts
    _evaluated(strategy, 6, 0.46)
    assert strategy.pool_quality(7) == pytest.approx(1.0)


def test_a_long_running_server_keeps_the_probes_and_timings_of_the_open_round_only(tmp_path: Path) -> None:
    strategy = _strategy(_pool(tmp_path), pool_probes=2)
    held = (30.0,) * 5 + (0.0,) * 5
    for number in range(1, 6):
        _plan(strategy, number, {"a": DeviceInfo(150, held)})
    assert {key[0] for key in strategy.probes_sent} == {5}
    assert set(strategy.generator_seconds) == {5}

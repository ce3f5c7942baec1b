"""The data-free generator: class weights, learning from teachers, and the shape of what it makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from cloud_server.learning._generator import DataFreeGenerator, Teachers, class_weights, train_on_synthetic
from cloud_server.learning._genfl_config import GenflConfig
from edge_agent import load_dataset
from edge_agent._training import train_local
from protocol import TrainConfig


def test_each_device_speaks_for_the_classes_it_holds() -> None:
    weights = class_weights([np.array([10.0, 0.0, 5.0]), np.array([0.0, 0.0, 15.0])], 3)
    assert weights[:, 0].tolist() == [1.0, 0.0]
    assert weights[:, 1].tolist() == [0.5, 0.5]  # nobody holds class 1: equal say
    assert weights[:, 2].tolist() == [0.25, 0.75]


def test_devices_without_counts_get_the_mean_and_nobody_sharing_means_equal_say() -> None:
    weights = class_weights([np.array([4.0, 0.0]), None], 2)
    assert np.allclose(weights.sum(0), 1.0) and weights[1, 0] == pytest.approx(0.5)  # it counts as average
    assert np.allclose(class_weights([None, None, None, None], 5), 0.25)
    noisy = class_weights([np.array([-2.0, 3.0]), np.array([1.0, -1.0])], 2)  # Laplace noise can go below 0
    assert noisy[:, 0].tolist() == [0.0, 1.0] and noisy[:, 1].tolist() == [1.0, 0.0]


@pytest.fixture(scope="module")
def digit_teachers() -> Teachers:
    """Two devices, each trained on half the classes of the digits: the generator's teachers."""
    dataset = load_dataset("digits")
    start = models.model_state(models.build_model("cnn-digits", seed=0))
    states, counts = [], []
    for classes in (range(0, 5), range(5, 10)):
        part = dataset.train.subset(np.flatnonzero(np.isin(dataset.train.labels, list(classes))))
        delta = train_local("cnn-digits", start, part, TrainConfig(local_epochs=3, batch_size=16, learning_rate=0.05,
                                                                    qat=False)).delta  # fmt: skip
        states.append({name: start[name] + delta[name] for name in start})
        counts.append(part.label_counts(10).astype(np.float64))
    mean = {name: (states[0][name] + states[1][name]) / 2 for name in start}
    mean = {name: value.astype(start[name].dtype) for name, value in mean.items()}
    return Teachers("cnn-digits", states, class_weights(counts, 10), mean)


def _teacher_accuracy(teachers: Teachers, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of images that the device holding their class labels as asked."""
    hits = 0
    for state, rows in zip(teachers.states, (labels < 5, labels >= 5)):
        model = models.build_model("cnn-digits")
        models.load_state(model, state)
        logits = models.predict_logits(model, images[rows])
        hits += int((logits.argmax(1).numpy() == labels[rows]).sum())
    return hits / len(labels)


def test_the_generator_learns_images_the_teachers_label_as_asked(digit_teachers: Teachers) -> None:
    generator = DataFreeGenerator("cnn-digits", GenflConfig(generator_steps=60, generator_batch=64), seed=1)
    labels = np.repeat(np.arange(10), 20)
    assert not generator.ready
    before = _teacher_accuracy(digit_teachers, generator.sample(labels, seed=5), labels)
    state, report = generator.fit(digit_teachers)
    images = generator.sample(labels, seed=5)
    after = _teacher_accuracy(digit_teachers, images, labels)
    assert generator.ready and report.steps == 60 and report.distill_loss is None
    assert state is digit_teachers.global_state  # no distillation asked
    assert images.dtype == np.uint8 and images.shape == (200, 1, 8, 8)
    assert after > max(before, 0.1) + 0.3, (before, after)
    assert np.array_equal(generator.sample(labels, seed=5), images)  # seeded sampling
    assert len({images[i].tobytes() for i in range(len(images))}) > 190  # varied, not one image per class
    soft = generator.soft_labels(images, labels)
    assert soft is not None and soft.shape == (200, 10) and np.allclose(soft.sum(1), 1.0, atol=1e-5)


def test_distillation_moves_the_global_model_and_keeps_its_batchnorm_statistics(digit_teachers: Teachers) -> None:
    generator = DataFreeGenerator(
        "cnn-digits", GenflConfig(generator_steps=20, generator_batch=32, distill_steps=5), seed=2
    )
    state, report = generator.fit(digit_teachers)
    assert report.distill_loss is not None and report.distill_loss >= 0
    moved = [n for n in state if "running" not in n and not np.array_equal(state[n], digit_teachers.global_state[n])]
    assert moved
    for name in state:
        if "running_mean" in name or "running_var" in name:
            assert np.array_equal(state[name], digit_teachers.global_state[name])


def test_aigc_only_training_uses_only_the_generators_samples(digit_teachers: Teachers) -> None:
    generator = DataFreeGenerator("cnn-digits", GenflConfig(generator_steps=30, generator_batch=64), seed=3)
    generator.fit(digit_teachers)
    start = models.model_state(models.build_model("cnn-digits", seed=9))
    trained = train_on_synthetic("cnn-digits", start, generator, steps=10, batch_size=32, seed=4)
    again = train_on_synthetic("cnn-digits", start, generator, steps=10, batch_size=32, seed=4)
    assert any(not np.array_equal(trained[n], start[n]) for n in start)
    assert all(np.array_equal(trained[n], again[n]) for n in start)  # a pure function of its seed
    assert torch.get_num_threads() >= 1


def test_the_generator_thread_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloud_server.learning._generator import generator_threads
    from protocol import ConfigError

    monkeypatch.setenv("GENFL_GENERATOR_THREADS", "3")
    assert generator_threads() == 3
    monkeypatch.setenv("GENFL_GENERATOR_THREADS", "many")
    with pytest.raises(ConfigError):
        generator_threads()

"""Synthetic batches on the wire: round trip, and every malformed field is a ProtocolError."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import (
    ProtocolError,
    SyntheticBatch,
    Task,
    TrainConfig,
    decode_message,
    decode_synthetic,
    encode_message,
    encode_synthetic,
    encode_tensors,
)

CLASSES = tuple("0123456789")  # the fleet's class names every task carries

SHAPE = (1, 8, 8)


def _batch(n: int = 6, soft: bool = False) -> SyntheticBatch:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    probabilities = rng.dirichlet(np.ones(10), size=n).astype(np.float16) if soft else None
    return SyntheticBatch(images, labels, probabilities)


@pytest.mark.parametrize("soft", [False, True])
def test_a_batch_round_trips(soft: bool) -> None:
    batch = _batch(soft=soft)
    back = decode_synthetic(encode_synthetic(batch), SHAPE, 10)
    assert np.array_equal(back.images, batch.images) and np.array_equal(back.labels, batch.labels)
    assert (back.soft_labels is None) == (not soft)
    assert len(back) == 6 and back.nbytes == batch.nbytes


@pytest.mark.parametrize(
    "tensors, why",
    [
        ({"images": np.zeros((2, 1, 8, 8), np.uint8)}, "labels missing"),
        ({"images": np.zeros((2, 3, 8, 8), np.uint8), "labels": np.zeros(2, np.int64)}, "wrong shape"),
        ({"images": np.zeros((2, 1, 8, 8), np.float32), "labels": np.zeros(2, np.int64)}, "float images"),
        ({"images": np.zeros((2, 1, 8, 8), np.uint8), "labels": np.zeros(3, np.int64)}, "count mismatch"),
        ({"images": np.zeros((2, 1, 8, 8), np.uint8), "labels": np.array([0, 10], np.int64)}, "label range"),
        ({"images": np.zeros((2, 1, 8, 8), np.uint8), "labels": np.array([0, -1], np.int64)}, "negative label"),
        (
            {
                "images": np.zeros((1, 1, 8, 8), np.uint8),
                "labels": np.zeros(1, np.int64),
                "soft_labels": np.full((1, 10), 0.5, np.float16),
            },
            "rows not summing to one",
        ),
        (
            {
                "images": np.zeros((1, 1, 8, 8), np.uint8),
                "labels": np.zeros(1, np.int64),
                "extra": np.zeros(1, np.uint8),
            },
            "unknown tensor",
        ),
    ],
)
def test_a_malformed_batch_is_refused(tensors: dict[str, np.ndarray], why: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_synthetic(encode_tensors(tensors), SHAPE, 10)
    assert caught.value.reason in ("bad-synthetic", "bad-tensors"), why


def test_garbage_bytes_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode_synthetic(b"\x00" * 40, SHAPE, 10)


def test_a_task_carries_its_synthetic_batch_and_weight() -> None:
    task = Task(round=2, device_id="d", model_name="m", model_id="a" * 64, model_size=9,
                config=TrainConfig(synthetic_weight=0.8), classes=CLASSES, synthetic_id="b" * 64,
                synthetic_size=120)  # fmt: skip
    back = decode_message(encode_message(task), Task)
    assert back.synthetic_id == "b" * 64 and back.synthetic_size == 120 and back.config.synthetic_weight == 0.8
    plain = decode_message(encode_message(Task(round=2, device_id="d", model_name="m", model_id="a" * 64,
                                               model_size=9, config=TrainConfig(), classes=CLASSES)), Task)  # fmt: skip
    assert plain.synthetic_id is None and plain.synthetic_size == 0


@pytest.mark.parametrize("synthetic_id, size", [("b" * 64, 0), (None, 5), ("not-hex", 5)])
def test_a_task_with_an_inconsistent_synthetic_field_is_refused(synthetic_id: str | None, size: int) -> None:
    with pytest.raises(ProtocolError):
        Task(round=2, device_id="d", model_name="m", model_id="a" * 64, model_size=9, config=TrainConfig(),
             classes=CLASSES, synthetic_id=synthetic_id, synthetic_size=size)  # fmt: skip


def test_a_negative_synthetic_weight_is_refused() -> None:
    with pytest.raises(ProtocolError):
        TrainConfig(synthetic_weight=-1.0)

import numpy as np
import pytest

from protocol import ConfigError, DataError
from simulation import dirichlet_partition, label_histogram, partition_labels, shard_partition

LABELS = np.repeat(np.arange(10), 100)


def test_dirichlet_is_reproducible_complete_and_respects_min_samples() -> None:
    parts = dirichlet_partition(LABELS, 10, alpha=0.5, seed=3, min_samples=20)
    again = dirichlet_partition(LABELS, 10, alpha=0.5, seed=3, min_samples=20)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))  # each sample exactly once
    assert min(len(p) for p in parts) >= 20


def test_smaller_alpha_means_more_skew() -> None:
    def skew(alpha: float) -> float:
        hist = label_histogram(LABELS, dirichlet_partition(LABELS, 10, alpha, seed=0), 10)
        return float((hist.max(1) / hist.sum(1)).mean())

    assert skew(0.1) > skew(100.0) + 0.3


def test_shards_give_each_device_exactly_k_classes() -> None:
    parts = shard_partition(LABELS, 10, classes_per_device=2, seed=0)
    hist = label_histogram(LABELS, parts, 10)
    assert ((hist > 0).sum(1) == 2).all()
    assert hist.sum() == 1000


def test_impossible_requests_fail_clearly() -> None:
    with pytest.raises(DataError, match="cannot give"):
        dirichlet_partition(LABELS, 200, 0.5, seed=0, min_samples=10)
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_partition(LABELS, 2, 0.0, seed=0)
    with pytest.raises(ConfigError, match="scheme"):
        partition_labels(LABELS, 2, scheme="iid")

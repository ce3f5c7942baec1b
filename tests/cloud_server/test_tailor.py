"""Tailoring: a device's synthetic samples fill the classes it lacks, within its byte budget."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_server.learning._tailor import synthetic_counts
from protocol import ConfigError


def test_lacking_classes_are_filled_up_to_the_balanced_share() -> None:
    counts = np.array([50, 50, 0, 0, 0, 0, 0, 0, 0, 0])
    out = synthetic_counts(counts, 100, 10, share=1.0, max_samples=10_000, min_per_class=0)
    assert out.tolist() == [0, 0] + [10] * 8  # a balanced set of 100 holds 10 per class


def test_a_half_share_fills_half_way_and_partly_held_classes_get_the_difference() -> None:
    counts = np.array([100, 96, 4, 0, 0, 0, 0, 0, 0, 0])
    out = synthetic_counts(counts, 200, 10, share=0.5, max_samples=10_000, min_per_class=0)
    assert out.tolist() == [0, 0, 6, 10, 10, 10, 10, 10, 10, 10]


def test_small_devices_still_get_a_minimum_per_lacking_class() -> None:
    out = synthetic_counts(np.array([20, 0, 0]), 20, 3, share=1.0, max_samples=10_000, min_per_class=16)
    assert out.tolist() == [0, 16, 16]


def test_the_budget_cuts_in_proportion_and_is_met_exactly() -> None:
    counts = np.array([1000, 0, 0, 500, 0])
    out = synthetic_counts(counts, 1500, 5, share=1.0, max_samples=101, min_per_class=0)
    assert out.sum() == 101
    assert out[0] == 0 and out[3] == 0 and max(out[[1, 2, 4]]) - min(out[[1, 2, 4]]) <= 1


def test_without_counts_every_class_gets_the_same_and_noisy_negatives_count_as_zero() -> None:
    assert synthetic_counts(None, 100, 4, share=1.0, max_samples=1000, min_per_class=0).tolist() == [25] * 4
    noisy = np.array([-3.2, 99.5, 0.4, 1.7])
    assert synthetic_counts(noisy, 100, 4, share=1.0, max_samples=1000, min_per_class=0).tolist() == [25, 0, 25, 24]


@pytest.mark.parametrize("share, budget", [(0.0, 10), (11.0, 10), (1.0, -1)])
def test_bad_settings_are_config_errors(share: float, budget: int) -> None:
    with pytest.raises(ConfigError):
        synthetic_counts(None, 10, 10, share=share, max_samples=budget)

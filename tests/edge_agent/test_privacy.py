"""Label counts under the Laplace mechanism: the noise has the promised scale and is drawn once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent import laplace_label_counts, released_label_counts
from edge_agent._daemon import AgentConfig
from protocol import ConfigError


def test_the_noise_has_scale_one_over_epsilon_and_counts_stay_non_negative() -> None:
    counts = [1000] * 2000  # far from zero, so clipping does not bias the spread
    rng = np.random.default_rng(7)
    for epsilon in (0.5, 2.0):
        noisy = np.array(laplace_label_counts(counts, epsilon, rng))
        mean_abs_error = float(np.abs(noisy - 1000).mean())  # E|Laplace(b)| = b = 1/epsilon
        assert mean_abs_error == pytest.approx(1.0 / epsilon, rel=0.1)
    assert min(laplace_label_counts([0] * 500, 0.1, rng)) >= 0.0


def test_smaller_epsilon_hides_a_single_sample_better() -> None:
    """How well a threshold test tells a count of 11 from 10: 1 - exp(-epsilon/2) for Laplace noise."""
    rng = np.random.default_rng(3)
    trials = 4000
    for epsilon in (0.1, 5.0):
        with_one = np.array([laplace_label_counts([11], epsilon, rng)[0] for _ in range(trials)])
        without = np.array([laplace_label_counts([10], epsilon, rng)[0] for _ in range(trials)])
        advantage = float((with_one > 10.5).mean() - (without > 10.5).mean())
        assert advantage == pytest.approx(1 - np.exp(-epsilon / 2), abs=0.04)
        if epsilon < 1:
            assert advantage < 0.1  # one sample more or less is nearly invisible


def test_a_release_is_kept_and_reused_and_redrawn_only_when_the_data_changes(tmp_path: Path) -> None:
    counts = [30, 0, 12, 5]
    first = released_label_counts(tmp_path, counts, 1.0)
    assert first != tuple(float(c) for c in counts)  # noised (a continuous draw equal to the truth is impossible)
    assert released_label_counts(tmp_path, counts, 1.0) == first  # the same release at every start
    kept = json.loads((tmp_path / "label-counts.json").read_text())
    assert kept["epsilon"] == 1.0 and tuple(kept["counts"]) == first
    changed = released_label_counts(tmp_path, [31, 0, 12, 5], 1.0)
    assert changed != first
    assert released_label_counts(tmp_path, counts, None) == (30.0, 0.0, 12.0, 5.0)  # no epsilon: exact


def test_a_corrupt_release_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "label-counts.json").write_text("{not json")
    assert len(released_label_counts(tmp_path, [1, 2], 0.5)) == 2


@pytest.mark.parametrize("epsilon", [0.0, -1.0])
def test_a_non_positive_epsilon_is_refused(tmp_path: Path, epsilon: float) -> None:
    with pytest.raises(ConfigError):
        AgentConfig(device_id="d", data="digits", state_dir=tmp_path, label_noise=epsilon)
    with pytest.raises(ConfigError):
        laplace_label_counts([1], epsilon, np.random.default_rng())

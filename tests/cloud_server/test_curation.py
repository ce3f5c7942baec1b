"""The devices' verdicts on pool images (--pool-probes): pure arithmetic, no devices."""

from __future__ import annotations

import numpy as np

from cloud_server.learning._curation import CurationConfig, PoolVerdicts, held_classes, pick_probes


def test_a_device_judges_only_classes_it_holds_enough_of() -> None:
    assert held_classes(np.array([50.0, 3.0, 0.0, 47.0]), 0.05).tolist() == [0, 3]  # 3 samples: too few to judge
    assert held_classes(None, 0.05).tolist() == []


def test_probes_go_to_the_least_judged_images_spread_over_the_held_classes() -> None:
    names = {0: [f"a/{i}" for i in range(4)], 1: [f"b/{i}" for i in range(4)]}
    votes = {"a/0": 3, "a/1": 3, "b/0": 1}
    picked = pick_probes(np.array([0, 1]), names, votes, 4, np.random.default_rng(0))
    assert sorted(i for c, i in picked if c == 0) == [2, 3]  # the two never judged
    chosen = [i for c, i in picked if c == 1]
    assert len(chosen) == 2 and 0 not in chosen  # two of the three never judged, not the one judged once
    assert pick_probes(np.array([], dtype=np.int64), names, votes, 4, np.random.default_rng(0)) == []


def test_images_the_fleet_rejects_are_drawn_less_and_clear_rejects_never() -> None:
    verdicts = PoolVerdicts()
    verdicts.record(1, ["c/good", "c/bad", "c/meh"], [3, 3, 3], [230, 2, 100])
    verdicts.record(1, ["c/bad"], [3], [3])  # another device, later
    weights = verdicts.weights(["c/good", "c/bad", "c/meh", "c/unjudged"], class_mean=0.4, config=CurationConfig())
    good, bad, meh, unjudged = weights.tolist()
    assert bad == 0.0  # judged twice, both below 5%
    assert good > unjudged > meh > 0.0  # an unjudged image counts as an average one of its class
    assert verdicts.agreement(since_round=1) == np.mean([230, 2, 3, 100]) / 255
    assert verdicts.agreement(since_round=2) is None
    means = verdicts.class_means(5)
    assert np.isnan(means[0]) and means[3] == np.mean([230, 2, 3, 100]) / 255


def test_verdicts_taken_back_leave_what_the_other_devices_said() -> None:
    from cloud_server.learning._curation import PoolVerdicts

    verdicts, only_b = PoolVerdicts(), PoolVerdicts()
    verdicts.record(3, ["x", "y"], [0, 1], [200, 10])  # a (revoked later)
    verdicts.record(3, ["x"], [0], [100])  # b
    only_b.record(3, ["x"], [0], [100])
    verdicts.record(3, ["x", "y"], [0, 1], [200, 10], sign=-1)
    assert verdicts.agreement(3) == only_b.agreement(3) == 100 / 255
    assert verdicts.score_sum["x"] == 100 and verdicts.votes["x"] == 1 and verdicts.votes["y"] == 0
    np.testing.assert_array_equal(np.isnan(verdicts.class_means(2)), [False, True])

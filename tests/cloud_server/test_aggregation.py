import itertools

import numpy as np
import pytest

from cloud_server import WeightedDeltaSum, apply_delta, weighted_average
from protocol import ProtocolError


def test_weighted_average_matches_hand_computed_values() -> None:
    # Prepare: two devices with 1 and 3 samples
    a = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    b = {"w": np.array([5.0, -2.0], dtype=np.float32)}
    # Execute
    mean = weighted_average([a, b], [1, 3])
    # Assert: (1*1 + 3*5)/4 = 4, (1*2 + 3*-2)/4 = -1
    np.testing.assert_array_equal(mean["w"], np.array([4.0, -1.0], dtype=np.float32))


def test_streaming_sum_gives_the_fedavg_model() -> None:
    global_state = {"w": np.array([10.0, 10.0], dtype=np.float32), "n": np.array(4, dtype=np.int64)}
    acc = WeightedDeltaSum(global_state)
    acc.add({"w": np.array([1.0, 0.5], dtype=np.float32), "n": np.array(2, dtype=np.int64)}, 2)
    acc.add({"w": np.array([-2.0, 0.25], dtype=np.float32), "n": np.array(4, dtype=np.int64)}, 6)
    new = apply_delta(global_state, acc.mean())
    # w: 10 + (2*1 + 6*-2)/8 = 8.75 ; 10 + (2*0.5 + 6*0.25)/8 = 10.3125 ; n: 4 + rint((4 + 24)/8 = 3.5) = 8
    np.testing.assert_array_equal(new["w"], np.array([8.75, 10.3125], dtype=np.float32))
    assert new["n"] == 8 and new["n"].dtype == np.int64
    assert (acc.total_weight, acc.count) == (8, 2)


def test_aggregation_is_bit_identical_in_any_order() -> None:
    rng = np.random.default_rng(0)
    template = {"w": np.zeros(4096, dtype=np.float32)}
    updates = [({"w": (rng.standard_normal(4096) * 10.0 ** rng.integers(-6, 1)).astype(np.float32)}, int(w))
               for w in rng.integers(1, 5000, size=5)]  # fmt: skip
    results = set()
    for order in itertools.permutations(updates):
        acc = WeightedDeltaSum(template)
        for delta, weight in order:
            acc.add(delta, weight)
        results.add(apply_delta(template, acc.mean())["w"].tobytes())
    assert len(results) == 1


@pytest.mark.parametrize(
    ("delta", "reason"),
    [
        ({"w": np.array([np.nan, 0.0], dtype=np.float32)}, "not-finite"),
        ({"w": np.array([0.0, 0.0, 0.0], dtype=np.float32)}, "bad-shape"),
        ({"w": np.array([0.0, 0.0], dtype=np.float64)}, "bad-dtype"),
        ({"v": np.array([0.0, 0.0], dtype=np.float32)}, "bad-shape"),
        ({"w": np.array([1e30, 0.0], dtype=np.float32)}, "too-large"),
    ],
)
def test_bad_updates_are_rejected_and_change_nothing(delta, reason: str) -> None:
    acc = WeightedDeltaSum({"w": np.zeros(2, dtype=np.float32)})
    with pytest.raises(ProtocolError) as info:
        acc.add(delta, 3)
    assert info.value.reason == reason
    assert acc.count == 0 and acc.total_weight == 0


def test_state_round_trips_for_resume() -> None:
    acc = WeightedDeltaSum({"w": np.zeros(3, dtype=np.float32)})
    acc.add({"w": np.array([0.1, 0.2, 0.3], dtype=np.float32)}, 7)
    copy = WeightedDeltaSum({"w": np.zeros(3, dtype=np.float32)})
    copy.restore(*acc.state())
    np.testing.assert_array_equal(copy.mean()["w"], acc.mean()["w"])


@pytest.mark.parametrize("aggregate", ["fedavg", "median"])
def test_an_update_taken_back_leaves_exactly_the_aggregate_of_the_others(aggregate: str) -> None:
    from cloud_server.learning._robust import BufferedUpdates

    template = {"w": np.zeros(4, dtype=np.float32)}
    rng = np.random.default_rng(0)
    deltas = {key: {"w": rng.normal(size=4).astype(np.float32)} for key in ("a", "b", "c")}
    weights = {"a": 7, "b": 3, "c": 5}

    def fresh() -> WeightedDeltaSum | BufferedUpdates:
        return WeightedDeltaSum(template) if aggregate == "fedavg" else BufferedUpdates(template, aggregate)

    everyone, without_b = fresh(), fresh()
    for key in ("a", "b", "c"):
        everyone.add(deltas[key], weights[key], key=key)
    everyone.remove(deltas["b"], weights["b"], key="b")
    for key in ("a", "c"):
        without_b.add(deltas[key], weights[key], key=key)
    assert (everyone.total_weight, everyone.count) == (without_b.total_weight, without_b.count) == (12, 2)
    np.testing.assert_array_equal(everyone.mean()["w"], without_b.mean()["w"])

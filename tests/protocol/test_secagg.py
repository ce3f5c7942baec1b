"""Secure aggregation's arithmetic and state machines, with every device and the server in one process."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_server.learning._aggregation import WeightedDeltaSum
from protocol import (
    ConfigError,
    MaskedUpdate,
    ProtocolError,
    SecAggForward,
    SecAggKeys,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    UnmaskRequest,
    decode_message,
    encode_message,
)
from protocol.secagg import (
    SecAggAggregator,
    SecAggDevice,
    SecAggFailed,
    SecAggParams,
    summed_update,
    update_words,
    vector_length,
)
from protocol.secagg._shamir import combine, split


def _round(
    vectors: dict[str, np.ndarray],
    *,
    drop_before_input: frozenset[str] = frozenset(),
    drop_before_unmask: frozenset[str] = frozenset(),
    degree: int | None = None,
    threshold: int | None = None,
) -> tuple[SecAggAggregator, dict[str, SecAggDevice]]:
    """Run the four phases over ``vectors``; the named devices vanish at the given phase."""
    length = len(next(iter(vectors.values())))
    params = SecAggParams.for_round("fleet/round-1", list(vectors), length, degree, threshold)
    server, devices = _shared(params)
    for name, device in devices.items():
        if name not in drop_before_input:
            server.add_masked(name, device.masked_input(vectors[name]))
    survivors, dropped = server.unmask_request()
    for name in survivors:
        if name not in drop_before_unmask:
            server.add_unmask(name, devices[name].unmask(survivors, dropped))
    return server, devices


def _shared(params: SecAggParams, *, receive: bool = True) -> tuple[SecAggAggregator, dict[str, SecAggDevice]]:
    """Every participant advertised and shared (and received its neighbours' shares, with ``receive``)."""
    devices = {name: SecAggDevice(name, params.context) for name in params.participants}
    server = SecAggAggregator(params)
    for name, device in devices.items():
        server.add_keys(name, *device.advertise())
    for name, device in devices.items():
        server.add_shares(name, device.share(params, server.roster(name)))
    if receive:
        for name, device in devices.items():
            device.receive(server.forwarded(name))
    return server, devices


def _vectors(count: int, length: int = 257, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"d{i:02d}": rng.integers(-(2**40), 2**40, size=length).astype(np.int64).view(np.uint64)
            for i in range(count)}  # fmt: skip


def _plain_sum(vectors: dict[str, np.ndarray], names: set[str]) -> np.ndarray:
    return sum((vectors[n].view(np.int64) for n in sorted(names)), np.zeros_like(vectors["d00"].view(np.int64)))


def test_shamir_rebuilds_from_any_threshold_shares_and_refuses_fewer() -> None:
    secret = bytes(range(32))
    shares = split(secret, range(1, 8), threshold=4)
    assert combine({x: shares[x] for x in (1, 3, 5, 7)}, 4) == secret
    assert combine({x: shares[x] for x in (2, 4, 6, 7)}, 4) == secret
    with pytest.raises(ProtocolError, match="too-few-shares"):
        combine({x: shares[x] for x in (1, 2, 3)}, 4)


def test_the_unmasked_sum_is_exact_and_no_masked_input_equals_its_vector() -> None:
    vectors = _vectors(10)
    server, devices = _shared(SecAggParams.for_round("f/r", list(vectors), 257))
    masked = {n: d.masked_input(vectors[n]) for n, d in devices.items()}
    for n, m in masked.items():
        server.add_masked(n, m)
        assert np.mean(m == vectors[n]) < 0.01  # the masked input says nothing word by word
    survivors, dropped = server.unmask_request()
    for n in survivors:
        server.add_unmask(n, devices[n].unmask(survivors, dropped))
    assert dropped == []
    assert np.array_equal(server.result().view(np.int64), _plain_sum(vectors, set(vectors)))


def test_three_of_ten_dropping_before_their_masked_input_leave_the_exact_sum_of_the_other_seven() -> None:
    vectors = _vectors(10, seed=1)
    gone = frozenset({"d01", "d04", "d08"})
    server, _ = _round(vectors, drop_before_input=gone)
    assert sorted(server.shared - server.sent) == sorted(gone)
    assert np.array_equal(server.result().view(np.int64), _plain_sum(vectors, set(vectors) - gone))


def test_devices_dropping_after_their_masked_input_are_recovered_from_their_neighbours_shares() -> None:
    vectors = _vectors(10, seed=2)
    server, _ = _round(vectors, drop_before_unmask=frozenset({"d02", "d05", "d09"}))
    assert np.array_equal(server.result().view(np.int64), _plain_sum(vectors, set(vectors)))


def test_a_sparse_graph_round_of_forty_with_dropouts_is_exact() -> None:
    vectors = _vectors(40, length=64, seed=3)
    params = SecAggParams.for_round("f/r", list(vectors), 64, degree=14, threshold=8)
    assert all(len(params.neighbours(n)) == 14 for n in params.participants)
    assert all(params.are_neighbours(b, a) for a in params.participants for b in params.neighbours(a))
    gone, late = frozenset({"d03", "d17", "d30"}), frozenset({"d11", "d25"})
    server, _ = _round(vectors, drop_before_input=gone, drop_before_unmask=late, degree=14, threshold=8)
    assert np.array_equal(server.result().view(np.int64), _plain_sum(vectors, set(vectors) - gone))


def test_below_the_threshold_the_round_fails_and_nothing_is_unmasked() -> None:
    vectors = _vectors(10, seed=4)
    params = SecAggParams.for_round("f/r", list(vectors), 257)
    gone = frozenset(sorted(vectors)[: 10 - params.threshold + 1])  # one more than the round can lose
    with pytest.raises(SecAggFailed, match="nothing is unmasked"):
        _round(vectors, drop_before_input=gone)
    # a survivor asked to unmask a round below the threshold refuses, revealing nothing
    _server, devices = _shared(params)
    device = devices["d00"]
    device.masked_input(vectors["d00"])
    with pytest.raises(ProtocolError, match="secagg-too-few"):
        device.unmask(["d00", "d01"], [n for n in params.participants if n not in ("d00", "d01")])


def test_too_few_unmasking_answers_fail_the_round_without_a_partial_result() -> None:
    vectors = _vectors(10, seed=5)
    params = SecAggParams.for_round("f/r", list(vectors), 257)
    late = frozenset(sorted(vectors)[: 10 - params.threshold + 1])  # too many vanish before answering
    server, _ = _round(vectors, drop_before_unmask=late)
    with pytest.raises(SecAggFailed, match="too few shares"):
        server.result()


def test_a_device_never_reveals_both_secrets_of_a_neighbour_nor_steps_out_of_order() -> None:
    vectors = _vectors(4, length=8, seed=6)
    params = SecAggParams.for_round("f/r", list(vectors), 8)
    _server, devices = _shared(params)
    with pytest.raises(ProtocolError, match="secagg-order"):
        devices["d00"].advertise()  # once only
    with pytest.raises(ProtocolError, match="secagg-order"):
        devices["d00"].share(params, {})  # nor again later
    device = devices["d00"]
    with pytest.raises(ProtocolError, match="secagg-order"):
        device.unmask(list(params.participants), [])  # before its masked input
    device2 = devices["d01"]
    device2.masked_input(vectors["d01"])
    with pytest.raises(ProtocolError, match="secagg-both"):
        device2.unmask(["d00", "d01", "d02", "d03"], ["d00"])  # d00 as sent and as dropped
    with pytest.raises(ProtocolError, match="secagg-order"):
        device2.unmask(["d00", "d01", "d02", "d03"], [])  # it refused once: no second try


def test_shares_sealed_for_one_neighbour_do_not_open_for_another() -> None:
    vectors = _vectors(3, length=4, seed=7)
    server, devices = _shared(SecAggParams.for_round("f/r", list(vectors), 4), receive=False)
    meant_for_d01 = server.forwarded("d01")
    with pytest.raises(ProtocolError, match="bad-ciphertext"):
        devices["d02"].receive({"d00": meant_for_d01["d00"]})


def test_the_default_graph_is_complete_for_small_rounds_and_sparse_for_large_ones() -> None:
    small = SecAggParams.for_round("f/r", [f"d{i}" for i in range(100)], 4)
    assert small.degree == 99 and small.threshold == 50  # a third dropping at random must leave a majority
    large = SecAggParams.for_round("f/r", [f"d{i:04d}" for i in range(3000)], 4)
    assert large.degree < 300 and large.threshold == large.degree // 2 + 1


def test_bad_parameters_are_refused() -> None:
    names = [f"d{i}" for i in range(10)]
    with pytest.raises(ConfigError, match="more than half"):
        SecAggParams.for_round("f/r", names, 4, degree=9, threshold=4)
    with pytest.raises(ConfigError, match="even degree"):
        SecAggParams.for_round("f/r", names, 4, degree=5, threshold=3)
    with pytest.raises(ConfigError, match="participants"):
        SecAggParams.for_round("f/r", ["only"], 4)


def test_the_words_of_weighted_updates_sum_to_what_plain_aggregation_sums() -> None:
    rng = np.random.default_rng(8)
    template = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}
    updates = [({k: rng.normal(size=v.shape).astype(np.float32) for k, v in template.items()}, int(w))
               for w in (12, 40, 7, 31)]  # fmt: skip
    figures = [(0.5, 0.25, 0.75), (1.5, 0.5, None), (2.0, 1.0, 0.25), (0.25, 0.0, 0.5)]  # loss, accuracy, eval
    plain = WeightedDeltaSum(template)
    words = []
    for (delta, weight), (loss, accuracy, evaluated) in zip(updates, figures):
        plain.add(delta, weight)
        words.append(update_words(delta, weight, template, loss, accuracy, evaluated))
    assert len(words[0]) == vector_length(template) == 17 + 1 + 4
    vectors = {f"d{i:02d}": w for i, w in enumerate(words)}
    server, _ = _round(vectors)
    summed = summed_update(server.result(), template)
    expected, total_weight, _count = plain.state()
    assert summed.total_weight == total_weight == 90
    assert all(np.array_equal(summed.sums[name], expected[name]) for name in template)
    weights = [w for _, w in updates]
    assert summed.train_loss == pytest.approx(sum(w * f[0] for w, f in zip(weights, figures)) / 90)
    assert summed.train_accuracy == pytest.approx(sum(w * f[1] for w, f in zip(weights, figures)) / 90)
    assert summed.eval_accuracy == pytest.approx((12 * 0.75 + 7 * 0.25 + 31 * 0.5) / (12 + 7 + 31))
    with pytest.raises(ProtocolError, match="aggregation range"):
        update_words(updates[0][0], 12, template, float("nan"), 0.5, None)


def _wire(message):  # type: ignore[no-untyped-def]
    """Through the frame format and back: what every message of a round goes through."""
    return decode_message(encode_message(message), type(message))


def test_a_round_carried_by_its_frames_gives_the_same_exact_sum() -> None:
    vectors = _vectors(6, length=33, seed=9)
    params = SecAggParams.for_round("f/r", list(vectors), 33)
    devices = {n: SecAggDevice(n, params.context) for n in params.participants}
    server = SecAggAggregator(params)
    for n, d in devices.items():
        keys = _wire(SecAggKeys(3, n, *d.advertise()))
        server.add_keys(keys.device_id, keys.cipher_key, keys.mask_key)
    for n, d in devices.items():
        roster = _wire(SecAggRoster(3, n, params.participants, params.degree, params.threshold, params.length,
                                    server.roster(n)))  # fmt: skip
        shares = _wire(SecAggShares(3, n, d.share(params, roster.keys)))
        server.add_shares(n, shares.sealed)
    for n, d in devices.items():
        d.receive(_wire(SecAggForward(3, n, server.forwarded(n))).sealed)
    for n in sorted(devices)[:5]:  # the last one drops before its masked input
        masked = _wire(MaskedUpdate(3, n, "a" * 64, devices[n].masked_input(vectors[n]).tobytes()))
        server.add_masked(n, np.frombuffer(masked.words, dtype="<u8").astype(np.uint64))
    survivors, dropped = server.unmask_request()
    for n in survivors:
        request = _wire(UnmaskRequest(3, n, tuple(survivors), tuple(dropped)))
        answer = _wire(SecAggUnmask(3, n, devices[n].unmask(request.survivors, request.dropped)))
        server.add_unmask(n, answer.shares)
    assert np.array_equal(server.result().view(np.int64), _plain_sum(vectors, set(sorted(vectors)[:5])))


def test_secagg_frames_refuse_wrong_sizes_and_kinds() -> None:
    with pytest.raises(ProtocolError, match="bad-field"):
        SecAggKeys(1, "d", bytes(31), bytes(32))
    with pytest.raises(ProtocolError, match="bad-field"):
        SecAggUnmask(1, "d", {"e": ("both", bytes(66))})  # type: ignore[dict-item]
    with pytest.raises(ProtocolError, match="bad-field"):
        MaskedUpdate(1, "d", "a" * 64, bytes(12))  # not whole words
    with pytest.raises(ProtocolError, match="bad-field"):
        UnmaskRequest(1, "d", ("a", "a"), ())
    frame = encode_message(SecAggShares(1, "d", {"e": bytes(160)}))
    with pytest.raises(ProtocolError):
        decode_message(frame.replace(b'"sealed":{"e":"', b'"sealed":{"e":"!'), SecAggShares)

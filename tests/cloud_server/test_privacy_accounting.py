"""DP-FedAvg's accounting and the device's clipping and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud_server.learning._accountant import PrivacyAccountant, epsilon_spent
from protocol import ConfigError, encode_tensors
from protocol._dp import clip_update, noise_share


def test_the_epsilon_is_the_librarys_and_an_independent_accountant_agrees() -> None:
    import dp_accounting
    from dp_accounting import pld, rdp

    # the library's own RDP accountant, composed round by round, gives the same figure

    direct = rdp.RdpAccountant(orders=[*range(2, 33), 40, 48, 64, 96, 128, 192, 256])
    for _ in range(30):
        direct.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)))
    assert epsilon_spent(1.0, 0.1, 30, 1e-5) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)
    # the privacy-loss-distribution accountant (another method) is tighter than RDP, and not by much
    tight = pld.PLDAccountant()
    tight.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 30)
    assert 0.7 * epsilon_spent(1.0, 0.1, 30, 1e-5) < tight.get_epsilon(1e-5) <= epsilon_spent(1.0, 0.1, 30, 1e-5)


def test_more_noise_or_fewer_rounds_spend_less_and_the_budget_stops_rounds() -> None:
    accountant = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.1, budget=4.0)
    spent = [accountant.epsilon(r) for r in (0, 1, 10, 100)]
    assert spent[0] == 0.0 and spent == sorted(spent) and spent[1] < 4.0 < spent[-1]
    assert epsilon_spent(2.0, 0.1, 100, 1e-5) < spent[-1]
    low, high = 1, 100  # the last round within the budget, by bisection
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if accountant.epsilon(middle) <= 4.0 else (low, middle)
    assert accountant.may_open(low - 1) and not accountant.may_open(low)  # round `low` fits, `low + 1` would not
    assert epsilon_spent(0.0, 0.1, 5, 1e-5) == math.inf
    for bad in ({"noise_multiplier": 0.0, "sampling_rate": 0.1}, {"noise_multiplier": 1.0, "sampling_rate": 1.5},
                {"noise_multiplier": 1.0, "sampling_rate": 0.1, "delta": 0.0}):  # fmt: skip
        with pytest.raises(ConfigError):
            PrivacyAccountant(**bad)  # type: ignore[arg-type]


def test_an_update_is_clipped_to_the_norm_and_its_step_counter_zeroed() -> None:
    rng = np.random.default_rng(0)
    delta = {"w": rng.normal(size=(20, 20)).astype(np.float32), "steps": np.array(7, dtype=np.int64)}
    clipped, norm = clip_update(delta, 1.0)
    after = math.sqrt(float(np.square(clipped["w"].astype(np.float64)).sum()))
    assert norm > 10 and after == pytest.approx(1.0, rel=1e-5) and clipped["steps"] == 0
    small = {"w": delta["w"] * 1e-3}
    kept, _ = clip_update(small, 1.0)
    assert np.array_equal(kept["w"], small["w"])  # inside the ball: unchanged


def test_the_devices_noise_shares_add_up_to_the_planned_noise() -> None:
    template = {"w": np.zeros(20_000, np.float32), "steps": np.zeros((), np.int64)}
    shares = [noise_share(template, 1.5, 0.5, 10, np.random.default_rng(seed)) for seed in range(10)]
    total = sum(share["w"].astype(np.float64) for share in shares)
    assert np.std(total) == pytest.approx(1.5 * 0.5, rel=0.03)  # the whole noise, from ten shares
    assert np.std(shares[0]["w"]) == pytest.approx(1.5 * 0.5 / math.sqrt(10), rel=0.03)
    assert all(share["steps"] == 0 for share in shares)


@pytest.mark.slow  # whole simulations
def test_a_private_run_reports_the_librarys_epsilon_every_round_and_stops_at_its_budget() -> None:
    from dataclasses import replace

    from simulation import SimulationConfig, run_simulation

    # Prepare: six devices, every one picked each round (sampling rate 1)
    base = SimulationConfig(dataset="digits", devices=6, alpha=0.5, rounds=4, seed=0, local_epochs=1, dp_clip=5.0,
                            dp_noise=0.8)  # fmt: skip
    # Execute: the noise added by the server; by the devices in shares under secure aggregation; with a budget
    trusted = run_simulation(base)
    secure = run_simulation(replace(base, secure_aggregation=True))
    budget = epsilon_spent(0.8, 1.0, 2, 1e-5) * 1.0001
    capped = run_simulation(replace(base, dp_budget=budget))
    # Assert: each round's epsilon is the library's for the same parameters
    expected = [epsilon_spent(0.8, 1.0, n, 1e-5) for n in range(1, 5)]
    for run in (trusted, secure):
        assert [r.metrics["dp_epsilon"] for r in run.rounds] == pytest.approx(expected, rel=1e-9)
        assert all(r.metrics["dp_noise_multiplier"] == 0.8 and r.metrics["dp_sampling_rate"] == 1.0
                   for r in run.rounds)  # fmt: skip
        assert run.rounds[-1].device_accuracy is None  # no board reported an exact accuracy
    assert len(capped.rounds) == 2 and capped.rounds[-1].metrics["dp_epsilon"] <= budget
    # the noise is real: the two runs differ from each other and from a run without it
    plain = run_simulation(replace(base, dp_clip=None))
    hashes = {hash(encode_tensors(run.final_state)) for run in (trusted, secure, plain)}
    assert len(hashes) == 3


def test_a_board_under_dp_sends_its_update_clipped_without_step_counters_or_exact_figures() -> None:
    import models
    from edge_agent import load_dataset
    from edge_agent._runner import run_task
    from protocol import Task, TrainConfig, decode_delta, default_classes

    state = models.model_state(models.build_model("cnn-digits", seed=0))
    blob = encode_tensors(state)
    data = load_dataset("digits").train
    config = TrainConfig(local_epochs=1, clip_norm=0.5, noise_multiplier=1.0)
    task = Task(round=1, device_id="d", model_name="cnn-digits", model_id="0" * 64, model_size=len(blob),
                config=config, classes=default_classes(10))  # fmt: skip
    update, residual = run_task(task, blob, "d", data, default_classes(10))
    delta = decode_delta(update.delta, update.codec, state)
    norm = math.sqrt(sum(float(np.square(v.astype(np.float64)).sum()) for v in delta.values() if v.dtype.kind == "f"))
    assert norm <= 0.5 * (1 + 1e-6) and residual is None
    assert all(not v.any() for v in delta.values() if v.dtype.kind != "f")  # BatchNorm's step counters: zero
    assert (update.train_loss, update.train_accuracy, update.eval_accuracy, update.probe_scores) == (0, 0, None, None)


def test_dp_refuses_what_it_cannot_protect_in_one_line() -> None:
    from simulation import SimulationConfig

    with pytest.raises(ConfigError, match="--dp-clip: the median rule"):
        SimulationConfig(dp_clip=1.0, aggregate="median")
    with pytest.raises(ConfigError, match="--dp-clip: the data-free generator"):
        SimulationConfig(dp_clip=1.0, strategy="genfl")
    with pytest.raises(ConfigError, match="--dp-budget needs --dp-clip"):
        SimulationConfig(dp_budget=4.0)
    with pytest.raises(ConfigError, match="noise multiplier must be a positive"):
        SimulationConfig(dp_clip=1.0, dp_noise=0.0)


def test_the_operator_is_told_once_when_the_noise_will_bury_the_rounds(caplog: pytest.LogCaptureFixture) -> None:
    import models
    from cloud_server.rounds._config import PrivacyConfig
    from cloud_server.rounds._round_privacy import RoundPrivacy

    cnn = models.model_state(models.build_model("cnn-digits", seed=0))
    mlp = models.model_state(models.build_model("mlp-digits", seed=0))
    private = RoundPrivacy(False, PrivacyConfig(1.0, 2.85, 1e-5, None), min_devices=2)
    # the benchmark's settings: 100 devices at epsilon 8 over 20 rounds (noise multiplier 2.85)
    floats = {
        name: sum(a.size for a in state.values() if a.dtype.kind == "f") for name, state in (("cnn", cnn), ("mlp", mlp))
    }
    assert floats == {"cnn": 24_282, "mlp": 2_410}  # (BatchNorm's running statistics are noised too)
    assert private.noise_on_mean(cnn, 100) == pytest.approx(2.85 * math.sqrt(24_282) / 100)  # 4.4: learned nothing
    assert private.noise_on_mean(mlp, 100) == pytest.approx(2.85 * math.sqrt(2_410) / 100)  # 1.4: learned
    assert RoundPrivacy(False, None, min_devices=2).noise_on_mean(cnn, 100) is None
    with caplog.at_level("WARNING", logger="genfl.server"):
        private.warn_if_noisy(1, mlp, 100)
        assert caplog.records == []
        private.warn_if_noisy(1, cnn, 100)
        private.warn_if_noisy(2, cnn, 100)
    assert len(caplog.records) == 1
    assert "the DP noise on the mean of 100 updates is 4.4 times the clipping norm" in caplog.records[0].getMessage()

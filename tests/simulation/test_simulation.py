import json
from dataclasses import replace
from pathlib import Path

import pytest

from protocol import ConfigError, DataError, decode_tensors
from simulation import SimulationConfig, run_simulation, write_outputs

TIMING = {"seconds"}


def _rounds_without_timing(metrics: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics["rounds"]]


@pytest.mark.slow
def test_fedavg_on_digits_reaches_90_percent_and_is_reproducible(tmp_path: Path) -> None:
    # Prepare: the acceptance command, in-process
    config = SimulationConfig(dataset="digits", devices=10, alpha=0.5, rounds=10, strategy="fedavg", seed=0)
    # Execute
    first = run_simulation(config)
    again = run_simulation(replace(config, rounds=3))  # the same seed: its first rounds again, bit for bit
    paths = write_outputs(first, tmp_path / "run")
    # Assert
    assert first.final_accuracy is not None and first.final_accuracy >= 0.90
    assert _rounds_without_timing(first.metrics())[:3] == _rounds_without_timing(again.metrics())
    metrics = json.loads(paths["metrics"].read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, 11))
    assert metrics["final_accuracy"] == first.final_accuracy
    assert all(r["devices"] == 10 and r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in metrics["rounds"])
    assert paths["curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = decode_tensors(paths["model"].read_bytes())
    assert saved.keys() == first.final_state.keys()


@pytest.mark.slow
def test_fedprox_with_shards_and_sampling_runs(tmp_path: Path) -> None:
    config = SimulationConfig(
        devices=6, partition="shards", classes_per_device=2, rounds=3, strategy="fedprox", prox_mu=0.1, fraction=0.5
    )
    result = run_simulation(config)
    assert [r.devices for r in result.rounds] == [3, 3, 3]
    assert (result.histogram > 0).sum(1).tolist() == [2] * 6


def test_bad_configs_fail_before_any_work() -> None:
    with pytest.raises(ConfigError, match="devices"):
        SimulationConfig(devices=0)
    with pytest.raises(DataError, match="cnn-small takes 3x32x32"):
        run_simulation(SimulationConfig(model="cnn-small", rounds=1))


@pytest.mark.slow
def test_int8_and_int4_updates_cut_the_uplink_and_keep_accuracy() -> None:
    runs = {codec: run_simulation(SimulationConfig(rounds=6, codec=codec)) for codec in ("fp32", "int8", "int4")}
    up = {codec: sum(r.bytes_up for r in run.rounds) for codec, run in runs.items()}
    accuracy = {codec: run.final_accuracy or 0.0 for codec, run in runs.items()}
    assert up["int8"] <= 0.27 * up["fp32"] and up["int4"] <= 0.15 * up["fp32"]
    assert accuracy["int8"] >= accuracy["fp32"] - 0.005 and accuracy["int4"] >= accuracy["fp32"] - 0.01

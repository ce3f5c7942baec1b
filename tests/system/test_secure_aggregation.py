"""Secure aggregation end to end: the same model bit for bit as without it, in memory, over MQTT with agent
processes, and as an operator runs it (`genfl-server serve --secure-aggregation`, real `genfl-edge run` boards
on image folders, also with client-level DP), the server never holding a single board's update."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from cloud_server.rounds._journal_reader import JournalReader
from edge_agent import DeviceDataset, load_dataset, save_npz
from models import read_checkpoint
from protocol import encode_tensors
from simulation._simulation import SimulationConfig, device_shards, run_simulation
from tests.system._helpers import processes, wait_for

DIGITS = tuple(str(d) for d in range(10))


def _model_hash(state: dict[str, np.ndarray]) -> str:
    return hashlib.sha256(encode_tensors(state)).hexdigest()


def test_a_digits_run_under_secure_aggregation_is_bit_for_bit_the_plain_one_in_memory_and_over_mqtt(
    mosquitto_url: str, fleet: str
) -> None:
    # Prepare: ten devices, five FedAvg rounds
    plain_config = SimulationConfig(dataset="digits", devices=10, alpha=0.5, rounds=5, seed=0, local_epochs=1)
    secure_config = replace(plain_config, secure_aggregation=True)
    # Execute: without and with it in memory; with it over MQTT, five agents to a process sharing two workers
    plain = run_simulation(plain_config)
    secure = run_simulation(secure_config)
    over_mqtt = run_simulation(replace(secure_config, transport="mqtt", broker=mosquitto_url, fleet=fleet,
                                       agents_per_process=5, worker_slots=2))  # fmt: skip
    # Assert: one model; every device in every round; nothing refused on the way
    assert _model_hash(plain.final_state) == _model_hash(secure.final_state) == _model_hash(over_mqtt.final_state)
    assert [r.accuracy for r in secure.rounds] == [r.accuracy for r in plain.rounds]
    assert [r.devices for r in over_mqtt.rounds] == [10] * 5 and over_mqtt.rejected == {}
    # the round's figures come out of the masked sum: equal to the plain weighted means up to the fixed point
    for s, p in zip(secure.rounds, plain.rounds):
        assert abs(s.train_loss - p.train_loss) < 1e-6
        assert s.device_accuracy is not None and p.device_accuracy is not None
        assert abs(s.device_accuracy - p.device_accuracy) < 1e-6
    # a masked update is 8 bytes a parameter, against 4 of the plain float32 one
    assert 1.5 < over_mqtt.rounds[0].bytes_up / plain.rounds[0].bytes_up < 2.5


def test_genfl_from_a_pool_under_secure_aggregation_trains_the_plain_model(tmp_path: Path) -> None:
    # Prepare: a pool of digits images outside the boards' data; boards of two classes each
    from cloud_server.learning._genfl_config import GenflConfig

    test = load_dataset("digits").test
    for label in range(10):
        for k, index in enumerate(np.flatnonzero(test.labels == label)[:12]):
            _save(test.images[index], tmp_path / "pool" / DIGITS[label] / f"{k}.png")
    genfl = GenflConfig(generator="pool", synthetic_pool=str(tmp_path / "pool"), warmup_rounds=1)
    plain_config = SimulationConfig(dataset="digits", devices=4, partition="shards", classes_per_device=2, rounds=2,
                                    strategy="genfl", seed=0, local_epochs=1, genfl=genfl)  # fmt: skip
    # Execute
    plain = run_simulation(plain_config)
    secure = run_simulation(replace(plain_config, secure_aggregation=True))
    # Assert: synthetic batches went out after the warm-up, and the sum made the same model
    assert [r.metrics.get("sent") for r in secure.rounds] == [False, True]
    assert _model_hash(secure.final_state) == _model_hash(plain.final_state)


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[0]).save(path)  # 8x8 grey PNG: lossless


def test_real_boards_on_image_folders_under_secure_aggregation_train_the_plain_simulated_model(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: four boards with two digit classes each, each shard written as the board's image folder (in the
    # shard's order), and the same run simulated in memory without secure aggregation
    digits = load_dataset("digits")
    by_class = np.argsort(digits.train.labels, kind="stable")
    save_npz(DeviceDataset("digits", DIGITS, digits.train.subset(by_class), digits.test), tmp_path / "digits.npz")
    config = SimulationConfig(dataset=f"npz:{tmp_path / 'digits.npz'}", devices=4, partition="shards",
                              classes_per_device=2, rounds=2, seed=0, local_epochs=1)  # fmt: skip
    shards = device_shards(config).shards
    for device_id, shard in shards:
        for position, (image, label) in enumerate(zip(shard.images, shard.labels)):
            _save(image, tmp_path / "boards" / device_id / "train" / DIGITS[label] / f"{position:05d}.png")
    expected = run_simulation(config)
    state = tmp_path / "server"
    # Execute
    with processes(tmp_path) as group:
        group.server("server", state, fleet, "--broker", mosquitto_url, "--rounds", "2", "--min-devices", "4",
                     "--local-epochs", "1", "--round-timeout", "180", "--secure-aggregation")  # fmt: skip
        for device_id, _ in shards:
            group.agent(device_id, device_id, fleet, mosquitto_url, f"folder:{tmp_path / 'boards' / device_id}",
                        "--min-batch-size", "1", "--min-local-steps", "0", "--classes", ",".join(DIGITS),
                        "--require-secure-aggregation")  # fmt: skip
        final = state / "checkpoints" / "round-0002.safetensors"
        wait_for(final.exists, 300, f"round 2's checkpoint (server log: {group.log('server')[-2000:]})")
        server_log = group.log("server")
        board_log = group.log(shards[0][0])
    # Assert: the plain model bit for bit, made from masked updates only
    _, trained = read_checkpoint(final)
    assert _model_hash(trained) == _model_hash(expected.final_state)
    assert server_log.count("secure aggregation of 4 devices") == 2, server_log[-3000:]
    assert "update from" not in server_log  # no board's update was ever accepted in the clear
    journal = JournalReader(state)
    assert [journal.round(n).accepted for n in (1, 2)] == [4, 4]  # type: ignore[union-attr]
    assert "sending it masked" in board_log or "masking it once" in board_log, board_log[-3000:]


def test_boards_that_require_dp_and_secure_aggregation_train_the_dp_model_and_the_server_counts_epsilon(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: three boards on image folders, each lacking four of the ten digits; the DP model, noise 1 on the sum
    from cloud_server.learning._accountant import epsilon_spent

    digits = load_dataset("digits").train
    for board in range(3):
        held = {(3 * board + k) % 10 for k in range(6)}
        for index in np.flatnonzero(np.isin(digits.labels, list(held)))[board::3]:
            _save(
                digits.images[index], tmp_path / f"b{board}" / "train" / DIGITS[digits.labels[index]] / f"{index}.png"
            )
    state = tmp_path / "server"
    # Execute
    with processes(tmp_path) as group:
        group.server("server", state, fleet, "--broker", mosquitto_url, "--rounds", "2", "--min-devices", "3",
                     "--model", "mlp-digits", "--classes", ",".join(DIGITS), "--round-timeout", "180",
                     "--secure-aggregation", "--dp-clip", "1.0", "--dp-noise", "1.0")  # fmt: skip
        for board in range(3):
            group.agent(f"b{board}", f"b{board}", fleet, mosquitto_url, f"folder:{tmp_path / f'b{board}'}",
                        "--require-secure-aggregation", "--min-noise-multiplier", "1.0")  # fmt: skip
        final = state / "checkpoints" / "round-0002.safetensors"
        wait_for(final.exists, 300, f"round 2's checkpoint (server log: {group.log('server')[-2000:]})")
        server_log = group.log("server")
        board_log = group.log("b0")
    # Assert: the DP model, trained from masked, clipped, noised updates only; the library's epsilon each round
    model_name, trained = read_checkpoint(final)
    assert model_name == "mlp-digits"
    assert set(trained) == {"features.1.weight", "features.1.bias", "classifier.weight", "classifier.bias"}
    assert all(np.isfinite(array).all() for array in trained.values())
    journal = JournalReader(state)
    for number in (1, 2):
        row = journal.round(number)
        assert row is not None and row.accepted == 3 and row.report is not None
        assert abs(row.report["dp_epsilon"] - epsilon_spent(1.0, 1.0, number, 1e-5)) < 1e-9
        assert f"round {number} closed: 3/3 updates, accuracy -, privacy spent: epsilon" in server_log
    assert "update from" not in server_log and "rejected" not in server_log, server_log[-3000:]
    assert "sending it masked" in board_log or "masking it once" in board_log, board_log[-3000:]

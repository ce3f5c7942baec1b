"""Boards that hold different subsets of the classes, as an operator runs them: real `genfl-edge run` agents on
image folders, a real `genfl-server serve`, the machine's Mosquitto.

Each board names only the folders it has. Numbered by their own sorted folder names, a board with the folders
``3`` and ``7`` would call them 0 and 1; numbered by the fleet's class list, they stay 3 and 7, and the fleet
trains bit for bit the model `simulate` trains on the same partition (which labels every sample from the one
data set it partitions). GenFL from a pool runs on top, so that the label counts the boards share (in the
fleet's order) and the probes they judge take part too.

A folder is read class by class; so that a board's samples come in the order of its shard, the partitioned
data set is the bundled digits sorted by class (an ``npz`` file), whose shards are class by class too.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cloud_server.learning._genfl_config import GenflConfig
from cloud_server.rounds._journal_reader import JournalReader
from edge_agent import DeviceDataset, load_dataset, save_npz
from models import checkpoint_classes, read_checkpoint
from protocol import encode_tensors
from simulation._simulation import SimulationConfig, device_shards, run_simulation
from tests.system._helpers import ENV, processes, wait_for

DIGITS = tuple(str(d) for d in range(10))


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[0]).save(path)  # 8x8 grey PNG: lossless


def _model_hash(state: dict[str, np.ndarray]) -> str:
    return hashlib.sha256(encode_tensors(state)).hexdigest()


def test_boards_lacking_classes_number_them_as_the_fleet_and_train_the_simulated_model(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: 4 boards with 2 digit classes each, each board's shard written as its own image folder (file names
    # keep the shard's order); a pool of other digits images for GenFL; the same run simulated in memory
    pool = tmp_path / "pool"
    test = load_dataset("digits").test
    for label in range(10):
        for k, index in enumerate(np.flatnonzero(test.labels == label)[:6]):
            _save(test.images[index], pool / DIGITS[label] / f"{k}.png")
    digits = load_dataset("digits")
    by_class = np.argsort(digits.train.labels, kind="stable")
    save_npz(DeviceDataset("digits", DIGITS, digits.train.subset(by_class), digits.test), tmp_path / "digits.npz")
    genfl = GenflConfig(generator="pool", synthetic_pool=str(pool), pool_probes=6, synthetic_budget_kb=4)
    config = SimulationConfig(dataset=f"npz:{tmp_path / 'digits.npz'}", devices=4, partition="shards",
                              classes_per_device=2, rounds=2, seed=0, strategy="genfl", local_epochs=1,
                              genfl=genfl)  # fmt: skip
    shards = device_shards(config).shards
    for device_id, shard in shards:
        for position, (image, label) in enumerate(zip(shard.images, shard.labels)):
            _save(image, tmp_path / "boards" / device_id / "train" / DIGITS[label] / f"{position:05d}.png")
    held = {device_id: sorted({DIGITS[c] for c in shard.labels}) for device_id, shard in shards}
    assert any(names != DIGITS[: len(names)] for names in map(tuple, held.values()))  # own numbering would differ
    expected = run_simulation(config)
    state = tmp_path / "server"
    # Execute
    with processes(tmp_path) as group:
        group.server(
            "server", state, fleet, "--broker", mosquitto_url, "--rounds", "2", "--min-devices", "4",
            "--strategy", "genfl", "--local-epochs", "1", "--synthetic-pool", str(pool), "--pool-probes", "6",
            "--synthetic-budget-kb", "4", "--round-timeout", "180",
        )  # fmt: skip
        for device_id, _ in shards:  # told the fleet's classes as enrollment tells them (a task would, too late
            # for the first round's label counts)
            group.agent(device_id, device_id, fleet, mosquitto_url, f"folder:{tmp_path / 'boards' / device_id}",
                        "--share-label-counts", "--min-batch-size", "1", "--min-local-steps", "0",
                        "--classes", ",".join(DIGITS))  # fmt: skip
        final = state / "checkpoints" / "round-0002.safetensors"
        wait_for(final.exists, 300, f"round 2's checkpoint (server log: {group.log('server')[-2000:]})")
        listed = subprocess.run([sys.executable, "-m", "cloud_server", "devices", "list", "--state-dir", str(state),
                                 "--json"], capture_output=True, text=True, env=ENV, timeout=60)  # fmt: skip
    # Assert: the model simulate trains, bit for bit; the fleet's list in the model and the journal
    _, trained = read_checkpoint(final)
    assert _model_hash(trained) == _model_hash(expected.final_state)
    assert checkpoint_classes(final) == DIGITS
    counts = {row.device_id: json.loads(row.label_counts or "null") for row in JournalReader(state).devices()}
    for device_id, shard in shards:  # every board shared its counts in the fleet's order
        assert counts[device_id] == [float(c) for c in np.bincount(shard.labels, minlength=10)]
    listing = json.loads(listed.stdout)
    assert listing["classes"] == list(DIGITS)
    assert {row["device_id"]: row["classes_held"] for row in listing["devices"]} == held


def test_a_board_with_a_class_the_fleet_does_not_know_stops_with_one_line(tmp_path: Path) -> None:
    # Prepare: a board whose folders are "3" and "three"
    _save(np.zeros((1, 8, 8), np.uint8), tmp_path / "data" / "3" / "a.png")
    _save(np.zeros((1, 8, 8), np.uint8), tmp_path / "data" / "three" / "a.png")
    # Execute: it knows the fleet's classes (as enrollment writes them); no broker is needed to find out
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--device-id", "b", "--data", f"folder:{tmp_path / 'data'}",
         "--state-dir", str(tmp_path / "state"), "--broker", "mqtt://127.0.0.1:9", "--classes", ",".join(DIGITS)],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    # Assert: exit code 3 (data), and one line that names the folder and the fleet's classes
    assert done.returncode == 3, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "three" in line]
    assert len(lines) == 1 and "not one of the fleet's 10 classes (0, 1, 2" in lines[0], done.stderr[-2000:]

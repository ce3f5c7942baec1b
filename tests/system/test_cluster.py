"""A fleet on a real three-node NATS cluster (MQTT on every node), started by the test on free loopback ports."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_server import SimulationConfig, SimulationHooks, run_simulation
from cloud_server._cluster import LocalCluster, free_loopback_spec
from protocol import encode_tensors, parse_brokers, rotated
from tests.system._helpers import skip_unless_ci

BASE = {"dataset": "digits", "devices": 6, "alpha": 0.5, "seed": 0}


def _model_hash(result) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(encode_tensors(result.final_state)).hexdigest()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    if shutil.which("nats-server") is None and shutil.which("nats-server", path="/usr/sbin") is None:
        skip_unless_ci("no nats-server on PATH (Debian: apt install nats-server)")
    with LocalCluster(free_loopback_spec(3), tmp_path / "nats") as running:
        yield running


def test_a_fleet_spread_over_three_nodes_gives_the_in_memory_model(cluster: LocalCluster, fleet: str) -> None:
    # Prepare: the coordinator on the first node, agent process k on node k mod 3
    seen: list[dict[str, list[str]]] = []
    hooks = SimulationHooks(on_round_start=lambda number, picked: seen.append(cluster.mqtt_clients()))
    # Execute
    local = run_simulation(SimulationConfig(**BASE, rounds=3))
    clustered = run_simulation(
        SimulationConfig(**BASE, rounds=3, transport="mqtt", broker=cluster.brokers, fleet=fleet), hooks
    )
    # Assert
    assert _model_hash(clustered) == _model_hash(local)
    assert [r.accuracy for r in clustered.rounds] == [r.accuracy for r in local.rounds]
    on_nodes = seen[-1]
    assert f"genfl-{fleet}-server" in on_nodes["n1"]
    agents = {node: [c for c in ids if c.startswith(f"genfl-{fleet}-device-")] for node, ids in on_nodes.items()}
    assert {node: len(ids) for node, ids in agents.items()} == {"n1": 2, "n2": 2, "n3": 2}
    assert f"genfl-{fleet}-device-001" in agents["n2"]


def test_losing_a_node_mid_round_loses_no_update_and_counts_none_twice(
    cluster: LocalCluster, fleet: str, tmp_path: Path
) -> None:
    # Prepare: round 2 loses n2 (agents' node, not the coordinator's) after its first update; n2 comes back
    # once round 2 is over; round 4 loses n1, the coordinator's node, the same way.
    rounds = 5
    accepted: list[tuple[int, str]] = []
    opened: dict[int, float] = {}
    killed: dict[int, str] = {}
    current = [0]
    on_nodes: dict[int, dict[str, list[str]]] = {}

    def on_start(number: int, picked: int) -> None:
        current[0] = number
        opened[number] = time.monotonic()
        on_nodes[number] = cluster.mqtt_clients()

    def on_accepted(device_id: str) -> None:
        accepted.append((current[0], device_id))
        if sum(1 for r, _ in accepted if r == current[0]) == 1 and current[0] in (2, 4):
            killed[current[0]] = "n2" if current[0] == 2 else "n1"
            cluster.kill(killed[current[0]])

    def on_closed(result) -> None:  # type: ignore[no-untyped-def]
        if result.round == 2:
            cluster.start_node("n2")
            cluster.wait_healthy(["n2"], 60)

    hooks = SimulationHooks(on_round_start=on_start, on_update_accepted=on_accepted, on_round_closed=on_closed)
    # Execute
    local = run_simulation(SimulationConfig(**BASE, rounds=rounds))
    clustered = run_simulation(
        SimulationConfig(**BASE, rounds=rounds, transport="mqtt", broker=cluster.brokers, fleet=fleet,
                         round_timeout_s=120),
        hooks,
    )  # fmt: skip
    # Assert: every device's update of every round counted once, none twice, the model the in-memory one
    assert killed == {2: "n2", 4: "n1"}
    counts = Counter(accepted)
    assert set(counts.values()) == {1}
    assert sorted(counts) == [(r, f"device-{d:03d}") for r in range(1, rounds + 1) for d in range(BASE["devices"])]
    assert [r.devices for r in clustered.rounds] == [BASE["devices"]] * rounds
    assert _model_hash(clustered) == _model_hash(local)
    # the agents that started on n2 (processes 1 and 4) were on n2 in round 2 and on another node in round 3
    second_node = parse_brokers(cluster.brokers)[1]
    starts_on_n2 = [f"device-{d:03d}" for d in range(BASE["devices"])
                    if parse_brokers(rotated(cluster.brokers, d))[0] == second_node]  # fmt: skip
    assert starts_on_n2 == ["device-001", "device-004"]
    client_ids = [f"genfl-{fleet}-{device}" for device in starts_on_n2]
    assert set(client_ids) <= set(on_nodes[2]["n2"])
    assert not set(client_ids) & set(on_nodes[3].get("n2", []))
    assert set(client_ids) <= set(on_nodes[3].get("n1", []) + on_nodes[3].get("n3", []))
    # the coordinator was on n1 until round 4 and on another node after
    server = f"genfl-{fleet}-server"
    assert server in on_nodes[4]["n1"] and "n1" not in on_nodes[5]
    assert server in on_nodes[5].get("n2", []) + on_nodes[5].get("n3", [])
    report = {
        "round_seconds_at_open": {n: round(opened[n + 1] - opened[n], 2) for n in range(1, rounds)},
        "round_seconds": {r.round: round(r.seconds, 2) for r in clustered.rounds},
        "killed": {str(k): v for k, v in killed.items()},
        "accepted": len(accepted),
        "rejected": clustered.rejected,
    }
    artifacts = Path(os.environ.get("GENFL_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "cluster-node-loss.json").write_text(json.dumps(report, indent=2) + "\n")
    print("node loss:", json.dumps(report))

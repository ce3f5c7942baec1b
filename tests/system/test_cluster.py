"""A fleet on a real three-node NATS cluster (MQTT on every node), started by the test on free loopback ports: an
open one, and one secured as `cluster-config --state-dir` writes it (TLS, logins, signed frames)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_server.broker._broker_files import SERVER_USER
from protocol import encode_tensors
from simulation import SimulationConfig, SimulationHooks, run_simulation, write_outputs
from testing import LocalCluster, free_loopback_spec
from tests.system._helpers import artifacts_dir, skip_unless_ci

pytestmark = pytest.mark.nats

BASE = {"dataset": "digits", "devices": 6, "alpha": 0.5, "seed": 0}


def _model_hash(result) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(encode_tensors(result.final_state)).hexdigest()


def _need_nats() -> None:
    if shutil.which("nats-server") is None and shutil.which("nats-server", path="/usr/sbin") is None:
        skip_unless_ci("no nats-server on PATH (Debian: apt install nats-server)")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    _need_nats()
    with LocalCluster(free_loopback_spec(3), tmp_path / "nats") as running:
        yield running


@pytest.fixture
def secured_cluster(tmp_path: Path, fleet: str) -> Iterator[LocalCluster]:
    _need_nats()
    with LocalCluster(free_loopback_spec(3), tmp_path / "nats", state_dir=tmp_path / "state", fleet=fleet) as running:
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


def test_secure_aggregation_over_the_secured_cluster_gives_the_plain_in_memory_model(
    secured_cluster: LocalCluster, fleet: str, tmp_path: Path
) -> None:
    # Prepare + Execute: signed frames over TLS on three nodes, every update masked; the plain run in memory
    local = run_simulation(SimulationConfig(**BASE, rounds=2))
    clustered = run_simulation(SimulationConfig(**BASE, rounds=2, transport="mqtt", state_dir=tmp_path / "state",
                                                secure_aggregation=True, round_timeout_s=300))  # fmt: skip
    # Assert: the same model bit for bit, every device in the sum of every round, nothing refused
    assert _model_hash(clustered) == _model_hash(local)
    assert [r.devices for r in clustered.rounds] == [BASE["devices"]] * 2 and clustered.rejected == {}


def _node_of(clients: dict[str, list[str]], client_id: str) -> str | None:
    return next((node for node, ids in clients.items() if client_id in ids), None)


def test_losing_a_node_mid_round_loses_no_update_and_counts_none_twice(
    secured_cluster: LocalCluster, fleet: str, tmp_path: Path
) -> None:
    # Prepare: a signed fleet over TLS. Round 2 loses a node the coordinator is not on, right after the round's
    # first update; that node comes back once round 2 is over. Round 4 loses the node the coordinator is on.
    cluster = secured_cluster
    rounds = 5
    server = SERVER_USER
    accepted: list[tuple[int, str]] = []
    killed: dict[int, str] = {}
    current = [0]
    on_nodes: dict[int, dict[str, list[str]]] = {}

    def on_start(number: int, picked: int) -> None:
        current[0] = number
        on_nodes[number] = cluster.mqtt_clients()

    def on_accepted(device_id: str) -> None:
        accepted.append((current[0], device_id))
        if sum(1 for r, _ in accepted if r == current[0]) == 1 and current[0] in (2, 4):
            clients = cluster.mqtt_clients()
            servers_node = _node_of(clients, server)
            assert servers_node is not None, clients
            victim = servers_node if current[0] == 4 else next(n for n in ("n2", "n3", "n1") if n != servers_node)
            killed[current[0]] = victim
            on_nodes[-current[0]] = clients  # who was where at the kill
            cluster.kill(victim)

    moved: dict[int, dict[str, str | None]] = {}  # round -> where the lost node's clients went

    def moved_off(number: int) -> dict[str, str | None]:
        """Wait (while the node is still dead) until its clients are back, on other nodes."""
        lost = [c for c in on_nodes[-number][killed[number]] if c.startswith(f"genfl-{fleet}-") or c == server]
        deadline = time.monotonic() + 60
        while True:
            clients = cluster.mqtt_clients()
            where = {c: _node_of(clients, c) for c in lost}
            if all(node is not None for node in where.values()) or time.monotonic() > deadline:
                return where
            time.sleep(0.2)

    def on_closed(result) -> None:  # type: ignore[no-untyped-def]
        if result.round in killed:
            moved[result.round] = moved_off(result.round)
        if result.round == 2:
            cluster.start_node(killed[2])
            cluster.wait_healthy([killed[2]], 60)

    hooks = SimulationHooks(on_round_start=on_start, on_update_accepted=on_accepted, on_round_closed=on_closed)
    # Execute
    local = run_simulation(SimulationConfig(**BASE, rounds=rounds))
    clustered = run_simulation(
        SimulationConfig(**BASE, rounds=rounds, transport="mqtt", state_dir=tmp_path / "state",
                         round_timeout_s=300),  # a loaded machine makes the failover slower, not red
        hooks,
    )  # fmt: skip
    # Assert: every device's update of every round counted once, none twice, the model the in-memory one
    assert sorted(killed) == [2, 4]
    counts = Counter(accepted)
    assert set(counts.values()) == {1}
    assert sorted(counts) == [(r, f"device-{d:03d}") for r in range(1, rounds + 1) for d in range(BASE["devices"])]
    assert [r.devices for r in clustered.rounds] == [BASE["devices"]] * rounds
    assert _model_hash(clustered) == _model_hash(local)
    # the agents on the node lost in round 2 went on on the others; so did the coordinator in round 4
    stranded = [c for c in moved[2] if c.startswith(f"genfl-{fleet}-device-")]
    assert stranded
    assert all(moved[2][c] in set(on_nodes[-2]) - {killed[2]} for c in stranded), moved[2]
    assert _node_of(on_nodes[-4], server) == killed[4]
    assert moved[4][server] in set(on_nodes[-4]) - {killed[4]}, moved[4]
    written = write_outputs(clustered, tmp_path / "out")  # what `simulate --state-dir` writes
    assert json.loads(written["metrics"].read_text())["config"]["state_dir"] == str(tmp_path / "state")
    report = {
        "round_seconds": {r.round: round(r.seconds, 2) for r in clustered.rounds},
        "killed": {str(k): v for k, v in killed.items()},
        "agents_on_the_node_lost_in_round_2": len(stranded),
        "accepted": len(accepted),
        "rejected": clustered.rejected,
    }
    artifacts = artifacts_dir()
    (artifacts / "cluster-node-loss.json").write_text(json.dumps(report, indent=2) + "\n")
    print("node loss:", json.dumps(report))

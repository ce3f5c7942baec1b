"""Benchmark: 100 agents over a three-node NATS cluster (open, and secured) vs over one Mosquitto, the same job.

``cnn-digits`` on digits, 100 devices holding one class each, 3 rounds, ten agents to a process, one training
pool: the job of ``bench_sim.py``'s 100-agent fleet. Once over a Mosquitto started for the run (the embedded
broker), once over three ``nats-server`` nodes with JetStream and MQTT on loopback (``genfl-server cluster-config``'s
configs; agent process k starts on node k mod 3, the coordinator on the first), once over the same cluster secured
as ``cluster-config --state-dir`` writes it (TLS on every listener and route, a bcrypt login and permissions per
device, two accounts, every frame signed), once in memory. Records seconds per round, the whole run's wall time,
updates accepted and each final model's sha256 (all must be equal).

Writes ``OUT/cluster.json``.

    python tools/bench_cluster.py --out bench        # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testing import LocalCluster, free_loopback_spec
from tools._bench_common import machine, write_json
from tools.bench_sim import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agents-per-process", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-cluster"))
    args = parser.parse_args()
    job = [
        "--dataset", "digits", "--devices", str(args.devices), "--partition", "shards", "--classes-per-device", "1",
        "--min-samples", "1", "--rounds", str(args.rounds), "--seed", "0", "--round-timeout", "900",
    ]  # fmt: skip
    mqtt = ["--transport", "mqtt", "--agents-per-process", str(args.agents_per_process)]
    runs: dict[str, Any] = {}
    runs["memory"] = simulate(args.work / "memory", *job, "--transport", "local")
    runs["mosquitto"] = simulate(args.work / "mosquitto", *job, *mqtt, "--embedded-broker", "mosquitto")
    with (
        tempfile.TemporaryDirectory(prefix="genfl-bench-nats-") as folder,
        LocalCluster(free_loopback_spec(3), Path(folder)) as cluster,
    ):
        runs["nats_cluster"] = simulate(args.work / "nats", *job, *mqtt, "--broker", cluster.brokers)
        runs["nats_cluster"]["nodes"] = 3
    with tempfile.TemporaryDirectory(prefix="genfl-bench-nats-secured-") as folder:
        state = Path(folder) / "state"
        with LocalCluster(free_loopback_spec(3), Path(folder) / "nats", state_dir=state, fleet="bench"):
            runs["nats_secured"] = simulate(args.work / "nats-secured", *job, *mqtt, "--state-dir", str(state))
            runs["nats_secured"]["nodes"] = 3
    for name, run in runs.items():
        run["mean_seconds_per_round"] = round(statistics.mean(run["seconds_per_round"]), 2)
        print(name, {k: v for k, v in run.items() if k != "model_sha256"}, flush=True)
    report = {
        "machine": machine(),
        "job": {"devices": args.devices, "rounds": args.rounds, "agents_per_process": args.agents_per_process},
        "runs": runs,
        "cluster_over_mosquitto": round(
            runs["nats_cluster"]["mean_seconds_per_round"] / runs["mosquitto"]["mean_seconds_per_round"], 2
        ),
        "secured_over_open_cluster": round(
            runs["nats_secured"]["mean_seconds_per_round"] / runs["nats_cluster"]["mean_seconds_per_round"], 2
        ),
        "same_model": len({run["model_sha256"] for run in runs.values()}) == 1,
    }
    write_json(args.out / "cluster.json", report)
    print("cluster/mosquitto per round:", report["cluster_over_mosquitto"], "secured/open cluster:",
          report["secured_over_open_cluster"], "same model:", report["same_model"])  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark: the cost of the real multi-process MQTT system against the in-memory one, and scale.

1. overhead: digits, 10 devices, Dirichlet 0.5, 5 rounds, seed 0, ``--transport local`` vs
   ``--transport mqtt`` (agent processes, persistent workers) against a broker; the final
   models must be bit-identical.
2. scale: N agents (default 100) with cnn-digits for 3 rounds over the broker, per-task
   workers with a few training slots (a worker holds ~700 MB once torch is loaded).

Writes ``OUT/mqtt.json``.

    python tools/bench_mqtt.py --broker mqtt://127.0.0.1:1883 --out bench
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud_server import SimulationConfig, SimulationResult, run_simulation
from protocol import encode_tensors
from tools._bench_common import machine, write_json


def _model_sha(result: SimulationResult) -> str:
    return hashlib.sha256(encode_tensors(result.final_state)).hexdigest()


def _timed(config: SimulationConfig) -> tuple[SimulationResult, float]:
    started = time.perf_counter()
    result = run_simulation(config)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default=None, help="broker URL (default: an embedded one)")
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()

    base = {"dataset": "digits", "devices": 10, "alpha": 0.5, "rounds": 5, "seed": 0}
    local, local_s = _timed(SimulationConfig(**base))
    fleet = f"bench-{uuid.uuid4().hex[:8]}"
    mqtt, mqtt_s = _timed(SimulationConfig(**base, transport="mqtt", broker=args.broker, fleet=fleet))
    steady_local = sum(r.seconds for r in local.rounds[1:])
    steady_mqtt = sum(r.seconds for r in mqtt.rounds[1:])
    overhead = {
        "config": base,
        "local_wall_s": local_s,
        "mqtt_wall_s": mqtt_s,
        "wall_ratio": mqtt_s / local_s,
        "rounds_2_to_5_local_s": steady_local,
        "rounds_2_to_5_mqtt_s": steady_mqtt,
        "steady_round_ratio": steady_mqtt / steady_local,
        "same_model": _model_sha(local) == _model_sha(mqtt),
        "final_accuracy": mqtt.final_accuracy,
    }
    print(overhead, flush=True)
    payload = {"machine": machine(), "broker": args.broker or "embedded", "overhead": overhead}
    if not args.skip_scale:
        config = SimulationConfig(
            dataset="digits", devices=args.agents, alpha=0.5, rounds=3, seed=0, min_samples=5,
            transport="mqtt", broker=args.broker, fleet=f"bench-{uuid.uuid4().hex[:8]}",
            worker="per-task", worker_slots=args.slots, round_timeout_s=1800,
        )  # fmt: skip
        scaled, scaled_s = _timed(config)
        payload["scale"] = {
            "agents": args.agents,
            "worker_slots": args.slots,
            "rounds_completed": len(scaled.rounds),
            "devices_per_round": [r.devices for r in scaled.rounds],
            "round_seconds": [r.seconds for r in scaled.rounds],
            "wall_s": scaled_s,
            "final_accuracy": scaled.final_accuracy,
        }
        print(payload["scale"], flush=True)
    write_json(args.out / "mqtt.json", payload)


if __name__ == "__main__":
    main()

"""Benchmark: final accuracy of each aggregation rule, clean and with malicious devices.

digits, 10 devices, Dirichlet 0.5, 10 rounds, seed 0 (the simulate defaults), with
``--malicious 2 --attack ATTACK`` against the clean run. Writes ``OUT/robust.json``.

    python tools/bench_robust.py --out bench
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud_server import SimulationConfig, run_simulation
from cloud_server._robust import AGGREGATORS
from tools._bench_common import machine, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["sign-flip", "scale", "noise"])
    parser.add_argument("--malicious", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    table: dict[str, dict[str, float | None]] = {}
    for aggregate in AGGREGATORS:
        row = {"clean": run_simulation(SimulationConfig(aggregate=aggregate)).final_accuracy}
        for attack in args.attacks:
            config = SimulationConfig(aggregate=aggregate, malicious=args.malicious, attack=attack)
            row[attack] = run_simulation(config).final_accuracy
        table[aggregate] = row
        print(aggregate, row, flush=True)
    write_json(args.out / "robust.json", {"machine": machine(), "malicious": args.malicious, "accuracy": table})


if __name__ == "__main__":
    main()

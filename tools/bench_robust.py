"""Benchmark: final accuracy of each aggregation rule, clean and with two of ten devices attacking, per seed.

digits, 10 devices, Dirichlet 0.5, 10 rounds, QAT (the simulate defaults), with ``--malicious 2 --attack ATTACK``
against clean FedAvg on the same seed. Two simulations run at once (one torch thread each). Writes
``OUT/robust.json``.

    python tools/bench_robust.py --out bench
    python tools/bench_robust.py --attacks sign-flip scale noise --seeds 0
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._bench_common import machine, write_json


def _run(job: tuple[str, str | None, int]) -> tuple[str, str | None, int, float]:
    import logging

    logging.disable(logging.WARNING)
    from simulation import SimulationConfig, run_simulation

    aggregate, attack, seed = job
    config = SimulationConfig(aggregate=aggregate, seed=seed, malicious=0 if attack is None else 2,
                              attack=attack or "sign-flip")  # fmt: skip
    return aggregate, attack, seed, float(run_simulation(config).final_accuracy or 0.0)


def main() -> None:
    from cloud_server.learning._robust import AGGREGATORS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["sign-flip"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    jobs = [("fedavg", None, seed) for seed in args.seeds]
    jobs += [(rule, attack, seed) for rule in AGGREGATORS for attack in args.attacks for seed in args.seeds]
    table: dict[str, dict[str, dict[str, float]]] = {}
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        for rule, attack, seed, accuracy in pool.map(_run, jobs):
            table.setdefault(rule, {}).setdefault(attack or "clean", {})[str(seed)] = accuracy
            print(rule, attack or "clean", seed, round(accuracy, 4), flush=True)
    write_json(args.out / "robust.json", {"machine": machine(), "malicious": 2, "accuracy": table})


if __name__ == "__main__":
    main()

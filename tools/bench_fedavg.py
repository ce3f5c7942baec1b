"""Benchmark: FedAvg / FedProx on non-IID data, accuracy per round.

Default: the CIFAR-10 zip with cnn-small, 10 devices, Dirichlet alpha 0.5,
20 rounds. Writes ``OUT/fedavg.json`` and ``OUT/fedavg.png``.

    python tools/bench_fedavg.py --out bench                       # full size
    python tools/bench_fedavg.py --train-subset 5000 --rounds 5    # a quick CPU look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulation import SimulationConfig, SimulationHooks, plot_curve, run_simulation
from tools._bench_common import machine, write_json

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.zip"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=f"zip:{DEFAULT_DATA}")
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "fedprox"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--torch-device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()

    runs = []
    curves: dict[str, list[float]] = {}
    for strategy in args.strategies:
        for seed in args.seeds:
            config = SimulationConfig(
                dataset=args.dataset,
                devices=args.devices,
                alpha=args.alpha,
                rounds=args.rounds,
                local_epochs=args.local_epochs,
                learning_rate=args.lr,
                strategy=strategy,
                seed=seed,
                model=args.model,
                train_subset=args.train_subset,
                torch_device=args.torch_device,
            )
            started = time.perf_counter()
            hooks = SimulationHooks(
                on_round_closed=lambda r, s=strategy, t0=started: print(
                    f"[{s}] round {r.round}: accuracy {r.accuracy:.4f} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            )
            result = run_simulation(config, hooks)
            runs.append(result.metrics())
            curves[f"{strategy} seed {seed}"] = [r.accuracy or 0.0 for r in result.rounds]
    summary = {name: {"final_accuracy": values[-1], "best_accuracy": max(values)} for name, values in curves.items()}
    write_json(args.out / "fedavg.json", {"machine": machine(), "summary": summary, "runs": runs})
    plot_curve(curves, args.out / "fedavg.png", title=f"{args.model}, {args.devices} devices, alpha {args.alpha}")
    print(summary)


if __name__ == "__main__":
    main()

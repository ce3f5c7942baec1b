"""Benchmark: FedAvg, FedProx, GenFL and AIGC-only on the same non-IID partitions, several seeds.

Default: the CIFAR-10 zip with cnn-small, 10 devices, Dirichlet alpha 0.1.
Every method sees the same partitions, initial models and device seeds (they
all derive from ``--seeds``). Writes ``OUT/NAME.json`` and ``OUT/NAME.png``
(accuracy per round, mean and min-max band over seeds) and keeps each run's
rounds, as they finish, in ``OUT/NAME-runs/`` (a cut-off run keeps what it has;
``--summarize`` rebuilds the report from them).

Reported per method: final accuracy (mean of the last 5 rounds, then mean and
spread over seeds), rounds to reach FedAvg's final accuracy (and that as a
share of FedAvg's rounds), server generator seconds per round and synthetic
bytes per device per round.

    python tools/bench_learning.py --out bench                                 # CIFAR-10, full size
    python tools/bench_learning.py --train-subset 5000 --rounds 12 --jobs 2    # on a CPU
    python tools/bench_learning.py --dataset digits --partition shards --rounds 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._bench_common import machine, write_json

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.zip"
STRATEGIES = ["fedavg", "fedprox", "genfl", "aigc-only"]
LAST = 5  # final accuracy = mean of the last LAST rounds


def _run(job: dict[str, Any]) -> str:
    """One (strategy, seed) simulation; its rounds go to ``job['path']`` as they close."""
    from cloud_server import SimulationConfig, SimulationHooks, run_simulation
    from cloud_server._strategy import GenflConfig

    path = Path(job["path"])
    config = SimulationConfig(**job["simulation"], genfl=GenflConfig(**job["genfl"]))
    rounds: list[dict[str, Any]] = []
    started = time.perf_counter()

    def closed(result: Any) -> None:
        rounds.append(asdict(result))
        payload = {"strategy": config.strategy, "seed": config.seed, "rounds": rounds,
                   "seconds": time.perf_counter() - started, "config": job}  # fmt: skip
        path.write_text(json.dumps(payload))
        print(f"[{config.strategy} seed {config.seed}] round {result.round}: accuracy {result.accuracy:.4f}, "
              f"generator {result.generator_s:.1f} s ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip

    run_simulation(config, SimulationHooks(on_round_closed=closed))
    return str(path)


def _rounds_to_reach(curve: list[float], target: float) -> int | None:
    """First round whose trailing mean over the last LAST rounds (fewer at the start) reaches ``target``:
    smoothed like the final accuracy it is compared with, so one lucky round does not count."""
    for index in range(len(curve)):
        if float(np.mean(curve[max(0, index + 1 - LAST) : index + 1])) >= target - 1e-12:
            return index + 1
    return None


def summarize(runs: list[dict[str, Any]], devices: int) -> dict[str, Any]:
    """Per strategy: final accuracy over seeds, rounds to reach FedAvg's final accuracy, generator cost."""
    by_strategy: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_strategy.setdefault(run["strategy"], {})[run["seed"]] = run
    length = min(len(run["rounds"]) for run in runs)  # a cut-off run: compare the rounds all have
    fedavg = by_strategy.get("fedavg", {})
    fedavg_final = {seed: float(np.mean([r["accuracy"] for r in run["rounds"][:length][-LAST:]]))
                    for seed, run in fedavg.items()}  # fmt: skip
    out: dict[str, Any] = {"rounds_compared": length}
    for strategy, seeds in by_strategy.items():
        curves = {seed: [r["accuracy"] for r in run["rounds"][:length]] for seed, run in seeds.items()}
        finals = [float(np.mean(curve[-LAST:])) for curve in curves.values()]
        reach = {seed: _rounds_to_reach(curve, fedavg_final[seed]) for seed, curve in curves.items()
                 if seed in fedavg_final}  # fmt: skip
        rounds = [r for run in seeds.values() for r in run["rounds"][:length]]
        synthetic = [r["synthetic_bytes"] / devices for r in rounds if r["synthetic_bytes"]]
        out[strategy] = {
            "seeds": sorted(seeds),
            "final_accuracy_mean": float(np.mean(finals)),
            "final_accuracy_std": float(np.std(finals)),
            "final_accuracy_per_seed": finals,
            "rounds_to_fedavg_final": reach,
            "rounds_to_fedavg_final_share": (
                None if not reach or None in reach.values() else float(np.mean(list(reach.values()))) / length
            ),
            "generator_s_per_round": float(np.mean([r["generator_s"] for r in rounds])),
            "synthetic_bytes_per_device_round": float(np.mean(synthetic)) if synthetic else 0.0,
            "seconds_per_round": float(np.mean([r["seconds"] for r in rounds])),
            "curve_mean": np.mean(list(curves.values()), axis=0).tolist(),
            "curve_min": np.min(list(curves.values()), axis=0).tolist(),
            "curve_max": np.max(list(curves.values()), axis=0).tolist(),
        }
    if "genfl" in out and "fedavg" in out:
        gain = out["genfl"]["final_accuracy_mean"] - out["fedavg"]["final_accuracy_mean"]
        share = out["genfl"]["rounds_to_fedavg_final_share"]
        out["targets"] = {
            "genfl_gain_points": 100 * gain,
            "gain_at_least_5_points": gain >= 0.05,
            "genfl_rounds_share": share,
            "reaches_in_60_percent_of_rounds": share is not None and share <= 0.6,
        }
    return out


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy in STRATEGIES:
        if strategy not in summary:
            continue
        entry = summary[strategy]
        x = np.arange(1, len(entry["curve_mean"]) + 1)
        line = axis.plot(x, entry["curve_mean"], marker="o", markersize=3,
                         label=f"{strategy} ({100 * entry['final_accuracy_mean']:.1f}%)")[0]  # fmt: skip
        axis.fill_between(x, entry["curve_min"], entry["curve_max"], color=line.get_color(), alpha=0.15)
    axis.set_xlabel("round")
    axis.set_ylabel("test accuracy (mean, min-max over seeds)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=f"zip:{DEFAULT_DATA}")
    parser.add_argument("--model", default=None)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--partition", default="dirichlet")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--classes-per-device", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--torch-device", default="auto", help="where devices train: cpu, cuda or auto")
    parser.add_argument("--no-qat", action="store_true", help="devices train in float (default: QAT, as shipped)")
    parser.add_argument("--jobs", type=int, default=1, help="simulations at once (processes)")
    parser.add_argument("--genfl", default="{}", help="GenflConfig fields as JSON, e.g. '{\"soft_labels\": true}'")
    parser.add_argument("--name", default="learning")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--summarize", action="store_true", help="only rebuild the report from the kept runs")
    args = parser.parse_args()

    runs_dir = args.out / f"{args.name}-runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        jobs = [
            {
                "path": str(runs_dir / f"{strategy}-seed{seed}.json"),
                "simulation": {
                    "dataset": args.dataset, "model": args.model, "devices": args.devices,
                    "partition": args.partition, "alpha": args.alpha, "classes_per_device": args.classes_per_device,
                    "rounds": args.rounds, "local_epochs": args.local_epochs, "batch_size": args.batch_size,
                    "learning_rate": args.lr, "strategy": strategy, "seed": seed, "train_subset": args.train_subset,
                    "torch_device": args.torch_device, "qat": not args.no_qat,
                },
                "genfl": json.loads(args.genfl),
            }
            for seed in args.seeds
            for strategy in args.strategies
        ]  # fmt: skip
        for stale in runs_dir.glob("*.json"):
            stale.unlink()
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            for done in pool.map(_run, jobs):
                print(f"finished {done}", flush=True)
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    if not runs:
        raise SystemExit(f"no runs in {runs_dir}")
    summary = summarize(runs, args.devices)
    config = runs[0]["config"]
    report = {
        "machine": machine(),
        "setup": {k: v for k, v in config["simulation"].items() if k not in ("strategy", "seed")}
        | {"seeds": sorted({r["seed"] for r in runs}), "genfl": config["genfl"]},
        "summary": summary,
    }
    write_json(args.out / f"{args.name}.json", report)
    subset = config["simulation"]["train_subset"]
    title = (f"{Path(str(config['simulation']['dataset'])).name}, {args.devices} devices, "
             f"{'alpha ' + str(args.alpha) if args.partition == 'dirichlet' else 'shards'}"
             + (f", {subset} training samples" if subset else ""))  # fmt: skip
    plot(summary, args.out / f"{args.name}.png", title)
    for strategy in STRATEGIES:
        if strategy in summary:
            entry = summary[strategy]
            final, spread = 100 * entry["final_accuracy_mean"], 100 * entry["final_accuracy_std"]
            print(f"{strategy:10s} final {final:.2f} +- {spread:.2f}"
                  f"  reach {entry['rounds_to_fedavg_final']}  generator {entry['generator_s_per_round']:.1f} s/round"
                  f"  synthetic {entry['synthetic_bytes_per_device_round'] / 1024:.0f} KiB/device/round")  # fmt: skip
    print("targets:", summary.get("targets"))


if __name__ == "__main__":
    main()

"""Benchmark: does GenFL beat FedAvg? Both on the same non-IID partitions, the same seeds, several of them.

Every method sees the same partitions, initial models and device seeds (they all
derive from ``--seeds``). Writes ``OUT/NAME.json`` and ``OUT/NAME.png`` (accuracy
per round: the mean over seeds with a band of one standard deviation, and each
seed thin) and keeps each run's rounds, as they finish, in ``OUT/NAME-runs/`` (a
cut-off run keeps what it has; ``--summarize`` rebuilds the report from them).

Reported per method: final accuracy (mean of the last ``--final-rounds`` rounds,
then mean, spread and each seed), per-round mean and spread, rounds GenFL needs
to reach FedAvg's final accuracy (and that as a share of the rounds), server
generator seconds per round, synthetic bytes per device and round, and the
targets: GenFL at least FedAvg + 3 points on average, no seed more than 1 point
below FedAvg, reaching FedAvg's final accuracy in at most 70% of the rounds.

Presets (one prepared command each):

    python tools/bench_learning.py --preset cpu --out bench       # CIFAR-10 zip, this 2-core CPU, <= 75 min
    python tools/bench_learning.py --preset cpu-pool --out bench  # ... GenFL from pools (tools/_pools.py), ~4 h
    python tools/bench_learning.py --preset gpu --out bench       # full CIFAR-10 on one GPU, <= 9 min on an H100
    python tools/bench_learning.py --preset gpu-pool --out bench  # ... GenFL from pools, on one GPU
    python tools/bench_learning.py --preset digits --out bench    # digits, 2 classes per device, 5 seeds

With ``--dp-epsilon EPSILON`` every run is DP-FedAvg (clipped at 1.0, the noise that spends EPSILON over the
rounds), e.g. ``--preset cpu-pool --only fedavg genfl-clean-500 --dp-epsilon 8 --name learning-pool-dp8``.

The pool presets compare FedAvg with GenFL from pools the benchmark builds (``tools/_pools.py``: held-out
real images, 500 or 50 per class, the same with 30% of them in a wrong class folder, the same in another
style) and with the data-free generator. Each variant is one line of the report, its gain over FedAvg per seed.

Any flag after ``--preset`` overrides it. Jobs run side by side get one torch and one generator thread each
(``GENFL_GENERATOR_THREADS=1``): more threads than cores would measure contention, not the method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._bench_common import machine, noise_for, write_json

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.zip"
STRATEGIES = ["fedavg", "fedprox", "genfl", "aigc-only"]

PRESETS: dict[str, dict[str, Any]] = {
    # 4 seeds x 2 methods on 2 cores: 4,000 training images, 12 rounds, the test split's fixed 2,000-image subset.
    "cpu": {"dataset": f"zip:{DEFAULT_DATA}", "alpha": 0.1, "rounds": 12, "seeds": [0, 1, 2, 3],
            "train_subset": 4000, "eval_subset": 2000, "jobs": 2, "torch_device": "cpu",
            "genfl": {"generator_steps": 30, "generator_batch": 64}},
    # Full CIFAR-10 on one GPU: batch 64, 20 rounds, 2 seeds, four simulations sharing the GPU.
    "gpu": {"dataset": f"zip:{DEFAULT_DATA}", "alpha": 0.1, "rounds": 20, "seeds": [0, 1], "batch_size": 64,
            "eval_subset": 5000, "jobs": 4, "torch_device": "cuda",
            "genfl": {"generator_steps": 100, "generator_batch": 256}},
    # The CPU preset's setting, GenFL from pools built of training images outside every seed's device subsets.
    "cpu-pool": {"dataset": f"zip:{DEFAULT_DATA}", "alpha": 0.1, "rounds": 12, "seeds": [0, 1, 2, 3],
                 "train_subset": 4000, "eval_subset": 2000, "jobs": 2, "torch_device": "cpu",
                 "genfl": {"generator_steps": 30, "generator_batch": 64}, "variants": "pool"},
    # The GPU preset's setting; the pools are built of the test images outside the evaluation subset.
    "gpu-pool": {"dataset": f"zip:{DEFAULT_DATA}", "alpha": 0.1, "rounds": 20, "seeds": [0, 1], "batch_size": 64,
                 "eval_subset": 5000, "jobs": 4, "torch_device": "cuda",
                 "genfl": {"generator_steps": 100, "generator_batch": 256}, "variants": "pool"},
    # The pathological split the test suite checks: 2 classes per device, 5 seeds.
    "digits": {"dataset": "digits", "partition": "shards", "classes_per_device": 2, "rounds": 10,
               "seeds": [0, 1, 2, 3, 4], "jobs": 2, "torch_device": "cpu", "final_rounds": 3},
}  # fmt: skip


# The pool presets' runs: label -> (strategy, GenflConfig fields on top of the preset's, pool variant or None).
# They run in this order, every seed of one before the next (a cut-off run keeps whole variants).
POOL_VARIANTS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "fedavg": ("fedavg", {}, None),
    "genfl-clean-500": ("genfl", {}, "clean-500"),
    "genfl-noisy": ("genfl", {}, "noisy"),
    "genfl-shift": ("genfl", {}, "shift"),
    "genfl-noisy-uncurated": ("genfl", {"pool_sharpness": 0.0, "pool_evidence": False}, "noisy"),
    "genfl-clean-50": ("genfl", {}, "clean-50"),
    "genfl-clean-500-auto": ("genfl", {"synthetic_restyle": "auto"}, "clean-500"),
    "genfl-data-free": ("genfl", {}, None),
}


def _run(job: dict[str, Any]) -> str:
    """One (strategy, seed) simulation; its rounds go to ``job['path']`` as they close."""
    if job.get("one_thread"):
        os.environ["GENFL_GENERATOR_THREADS"] = "1"
    from cloud_server.learning._genfl_config import GenflConfig
    from simulation import SimulationConfig, SimulationHooks, run_simulation

    path = Path(job["path"])
    config = SimulationConfig(**job["simulation"], genfl=GenflConfig(**job["genfl"]))
    rounds: list[dict[str, Any]] = []
    started = time.perf_counter()

    def closed(result: Any) -> None:
        rounds.append(asdict(result))
        payload = {"strategy": job.get("label", config.strategy), "seed": config.seed, "rounds": rounds,
                   "seconds": time.perf_counter() - started, "config": job}  # fmt: skip
        path.write_text(json.dumps(payload))
        seconds = result.metrics.get("generator_s", 0.0)
        print(f"[{payload['strategy']} seed {config.seed}] round {result.round}: accuracy {result.accuracy:.4f}, "
              f"generator {seconds:.1f} s ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip

    run_simulation(config, SimulationHooks(on_round_closed=closed))
    return str(path)


def rounds_to_reach(curve: list[float], target: float, window: int) -> int | None:
    """First round whose trailing mean over ``window`` rounds (fewer at the start) reaches ``target``:
    smoothed like the final accuracy it is compared with, so one lucky round does not count."""
    for index in range(len(curve)):
        if float(np.mean(curve[max(0, index + 1 - window) : index + 1])) >= target - 1e-12:
            return index + 1
    return None


def summarize(runs: list[dict[str, Any]], devices: int, window: int) -> dict[str, Any]:
    """Per strategy: final accuracy over seeds, per-round mean and spread, rounds to FedAvg's final accuracy."""
    by_strategy: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_strategy.setdefault(run["strategy"], {})[run["seed"]] = run
    length = min(len(run["rounds"]) for run in runs)  # a cut-off run: compare the rounds all have
    fedavg = by_strategy.get("fedavg", {})
    fedavg_final = {seed: float(np.mean([r["accuracy"] for r in run["rounds"][:length][-window:]]))
                    for seed, run in fedavg.items()}  # fmt: skip
    out: dict[str, Any] = {"rounds_compared": length, "final_rounds": window}
    for strategy, seeds in by_strategy.items():
        curves = {seed: [r["accuracy"] for r in run["rounds"][:length]] for seed, run in seeds.items()}
        finals = {seed: float(np.mean(curve[-window:])) for seed, curve in curves.items()}
        reach = {seed: rounds_to_reach(curve, fedavg_final[seed], window) for seed, curve in curves.items()
                 if seed in fedavg_final}  # fmt: skip
        rounds = [r for run in seeds.values() for r in run["rounds"][:length]]
        synthetic = [r["metrics"]["bytes"] / devices for r in rounds if r["metrics"].get("bytes")]
        matrix = np.array(list(curves.values()))
        out[strategy] = {
            "seeds": sorted(seeds),
            "final_accuracy_mean": float(np.mean(list(finals.values()))),
            "final_accuracy_std": float(np.std(list(finals.values()))),
            "final_accuracy_per_seed": {str(s): v for s, v in sorted(finals.items())},
            "gain_over_fedavg_per_seed": {
                str(s): finals[s] - fedavg_final[s] for s in sorted(finals) if s in fedavg_final
            },
            "rounds_to_fedavg_final": {str(s): v for s, v in sorted(reach.items())},
            "rounds_to_fedavg_final_share": (
                None if not reach or None in reach.values() else float(max(reach.values())) / length
            ),
            "generator_s_per_round": float(np.mean([r["metrics"].get("generator_s", 0.0) for r in rounds])),
            "synthetic_bytes_per_device_round": float(np.mean(synthetic)) if synthetic else 0.0,
            "seconds_per_round": float(np.mean([r["seconds"] for r in rounds])),
            "curve_mean": matrix.mean(0).tolist(),
            "curve_std": matrix.std(0).tolist(),
            "curves": {str(s): c for s, c in sorted(curves.items())},
        }
    if "genfl" in out and "fedavg" in out:
        gains = out["genfl"]["gain_over_fedavg_per_seed"]
        share = out["genfl"]["rounds_to_fedavg_final_share"]
        mean_gain = out["genfl"]["final_accuracy_mean"] - out["fedavg"]["final_accuracy_mean"]
        out["targets"] = {
            "genfl_gain_points": 100 * mean_gain,
            "gain_at_least_3_points": mean_gain >= 0.03,
            "worst_seed_points": 100 * min(gains.values()),
            "no_seed_more_than_1_point_below": min(gains.values()) >= -0.01,
            "genfl_rounds_share": share,
            "reaches_in_70_percent_of_rounds": share is not None and share <= 0.7,
        }
    if "fedavg" in out and any(name.startswith("genfl-") for name in by_strategy):
        out["pool_targets"] = pool_targets(out, by_strategy, length)
    return out


def worst_round_gap(curve: list[float], baseline: list[float], after: int) -> float:
    """The lowest (curve - baseline) over the rounds after round ``after`` (1-based), in accuracy."""
    gaps = [a - b for a, b in zip(curve[after:], baseline[after:])]
    return min(gaps) if gaps else 0.0


def pool_targets(out: dict[str, Any], runs: dict[str, dict[int, dict[str, Any]]], length: int) -> dict[str, Any]:
    """The pool path's targets: the clean pool's gain, the noisy pool's (curated) within 3 points of it, the
    shifted pool's gain and its worst round against FedAvg after the first synthetic one."""
    fedavg = out["fedavg"]

    def gain(name: str) -> float | None:
        return None if name not in out else 100 * (out[name]["final_accuracy_mean"] - fedavg["final_accuracy_mean"])

    targets: dict[str, Any] = {name: {"gain_points": gain(name)} for name in out if name.startswith("genfl-")}
    clean = out.get("genfl-clean-500")
    if clean is not None:
        per_seed = [100 * g for g in clean["gain_over_fedavg_per_seed"].values()]
        share = clean["rounds_to_fedavg_final_share"]
        targets["genfl-clean-500"].update({
            "gain_at_least_20_points": gain("genfl-clean-500") >= 20.0,  # type: ignore[operator]
            "worst_seed_points": min(per_seed),
            "every_seed_at_least_15_points": min(per_seed) >= 15.0,
            "rounds_share": share,
            "reaches_fedavg_final_in_35_percent_of_rounds": share is not None and share <= 0.35,
        })  # fmt: skip
    for name in ("genfl-noisy", "genfl-noisy-uncurated"):
        if name in out and clean is not None:
            behind = gain("genfl-clean-500") - gain(name)  # type: ignore[operator]
            targets[name]["points_behind_clean"] = behind
            targets[name]["within_3_points_of_clean"] = behind <= 3.0
    if "genfl-shift" in out:
        synthetic_rounds = [r["round"] for run in runs["genfl-shift"].values() for r in run["rounds"]
                            if r["metrics"].get("bytes")]  # fmt: skip
        first = min(synthetic_rounds, default=1)
        shifted = out["genfl-shift"]["curves"]
        worst = {
            str(seed): 100 * worst_round_gap(shifted[str(seed)], fedavg["curves"][str(seed)], first)
            for seed in runs["genfl-shift"]
            if str(seed) in fedavg["curves"]
        }
        targets["genfl-shift"].update({
            "gain_at_least_3_points": (gain("genfl-shift") or 0.0) >= 3.0,
            "first_synthetic_round": first,
            "worst_round_vs_fedavg_points_per_seed": worst,
            "no_round_more_than_1_point_below": min(worst.values(), default=0.0) >= -1.0,
        })  # fmt: skip
    return targets


def results_table(summary: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The pool runs as a Markdown table: final accuracy, gain over FedAvg and rounds to FedAvg's final
    accuracy per seed, and the pool quality the server measured (mean over the synthetic rounds)."""
    quality: dict[str, list[float]] = {}
    for run in runs:
        values = [r["metrics"]["pool_quality"] for r in run["rounds"] if r["metrics"].get("sent")]
        quality.setdefault(run["strategy"], []).extend(v for v in values if v is not None)
    lines = ["| run | seeds | final accuracy, mean +- std | gain over FedAvg per seed (points) | "
             "rounds to FedAvg's final, per seed | pool quality |", "|---|---|---|---|---|---|"]  # fmt: skip
    order = list(POOL_VARIANTS)
    names = [n for n in summary if isinstance(summary[n], dict) and "curve_mean" in summary[n]]
    for name in sorted(names, key=lambda n: order.index(n) if n in order else len(order)):
        entry = summary[name]
        gains = " ".join(f"{100 * g:+.1f}" for g in entry["gain_over_fedavg_per_seed"].values())
        reach = " ".join("-" if r is None else str(r) for r in entry["rounds_to_fedavg_final"].values())
        mean_quality = f"{np.mean(quality[name]):.2f}" if quality.get(name) else "-"
        lines.append(f"| {name} | {len(entry['seeds'])} | {100 * entry['final_accuracy_mean']:.1f} +- "
                     f"{100 * entry['final_accuracy_std']:.1f} | {gains if name != 'fedavg' else '-'} | "
                     f"{reach if name != 'fedavg' else '-'} | {mean_quality} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    names = [n for n in summary if isinstance(summary[n], dict) and "curve_mean" in summary[n]]
    for strategy in sorted(names, key=lambda n: (n not in STRATEGIES, STRATEGIES.index(n) if n in STRATEGIES else n)):
        entry = summary[strategy]
        mean, std = np.array(entry["curve_mean"]), np.array(entry["curve_std"])
        x = np.arange(1, len(mean) + 1)
        line = axis.plot(x, mean, marker="o", markersize=3, linewidth=2,
                         label=f"{strategy} ({100 * entry['final_accuracy_mean']:.1f}% +- "
                               f"{100 * entry['final_accuracy_std']:.1f})")[0]  # fmt: skip
        axis.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        for curve in entry["curves"].values():
            axis.plot(x, curve, color=line.get_color(), linewidth=0.6, alpha=0.35)
    axis.set_xlabel("round")
    axis.set_ylabel("test accuracy (mean +- std over seeds; thin: each seed)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _pools(args: argparse.Namespace) -> dict[str, Path]:
    """The benchmark's pools, built once: from training images outside every seed's device subsets, or (a
    preset that trains on the whole training split) from the test images outside the evaluation subset."""
    from tools._pools import build_pools

    return build_pools(args.dataset, args.seeds, args.train_subset, args.pool_dir, eval_subset=args.eval_subset)


def _parser() -> argparse.ArgumentParser:
    from cloud_server.learning._strategy import StrategyConfig  # the training settings' defaults

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--dataset", default=f"zip:{DEFAULT_DATA}")
    parser.add_argument("--model", default=None)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--partition", default="dirichlet")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--classes-per-device", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--local-epochs", type=int, default=StrategyConfig.local_epochs)
    parser.add_argument("--batch-size", type=int, default=StrategyConfig.batch_size)
    parser.add_argument("--lr", type=float, default=StrategyConfig.learning_rate)
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "genfl"], help=f"of {STRATEGIES}")
    parser.add_argument("--variants", default=None, help="pool: FedAvg and GenFL from each benchmark pool")
    parser.add_argument("--only", nargs="+", default=None, help=f"with --variants pool: these of {list(POOL_VARIANTS)}")
    parser.add_argument(
        "--pool-dir",
        type=Path,
        default=Path(__file__).resolve().parents[1] / ".bench_data" / "pools",
        help="where the benchmark's pools are built (outside git: they derive from the data set)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--eval-subset", type=int, default=None, help="evaluate on a fixed test subset")
    parser.add_argument("--final-rounds", type=int, default=3, help="final accuracy = mean of the last N rounds")
    parser.add_argument("--torch-device", default="auto", help="where devices train: cpu, cuda or auto")
    parser.add_argument("--no-qat", action="store_true", help="devices train in float (default: QAT, as shipped)")
    parser.add_argument("--jobs", type=int, default=1, help="simulations at once (processes)")
    parser.add_argument("--genfl", default=None, help="GenflConfig fields as JSON, e.g. '{\"replay\": 512}'")
    parser.add_argument("--name", default=None, help="output name (default: learning-PRESET)")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--summarize", action="store_true", help="only rebuild the report from the kept runs")
    parser.add_argument("--dp-epsilon", type=float, default=None,
                        help="client-level DP: clip 1.0 and the noise that spends this epsilon (delta 1e-5) over "
                             "the rounds, every device picked")  # fmt: skip
    return parser


def main() -> None:
    parser = _parser()
    preset = parser.parse_known_args()[0].preset
    if preset is not None:
        defaults = {key.replace("-", "_"): value for key, value in PRESETS[preset].items() if key != "genfl"}
        parser.set_defaults(**defaults, genfl=json.dumps(PRESETS[preset].get("genfl", {})))
        if preset.endswith("-pool"):
            parser.set_defaults(name="learning-pool" if preset == "cpu-pool" else f"learning-{preset}")
    args = parser.parse_args()
    name = args.name or f"learning-{preset or 'custom'}"
    runs_dir = args.out / f"{name}-runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    private = {}
    if args.dp_epsilon is not None:
        private = {"dp_clip": 1.0, "dp_noise": noise_for(args.dp_epsilon, 1.0, args.rounds, 1e-5)}
    if not args.summarize:
        runs_of = [(strategy, strategy, {}, None) for strategy in args.strategies]
        if args.variants == "pool":
            pools = _pools(args)
            runs_of = [(label, strategy, extra, None if variant is None else str(pools[variant]))
                       for label, (strategy, extra, variant) in POOL_VARIANTS.items()
                       if args.only is None or label in args.only]  # fmt: skip
        jobs = [
            {
                "path": str(runs_dir / f"{label}-seed{seed}.json"),
                "label": label,
                "one_thread": args.jobs > 1,
                "simulation": {
                    "dataset": args.dataset, "model": args.model, "devices": args.devices,
                    "partition": args.partition, "alpha": args.alpha, "classes_per_device": args.classes_per_device,
                    "rounds": args.rounds, "local_epochs": args.local_epochs, "batch_size": args.batch_size,
                    "learning_rate": args.lr, "strategy": strategy, "seed": seed, "train_subset": args.train_subset,
                    "eval_subset": args.eval_subset, "torch_device": args.torch_device, "qat": not args.no_qat,
                    **private,
                },
                "genfl": {**json.loads(args.genfl or "{}"), **extra,
                          **({} if pool is None else {"generator": "pool", "synthetic_pool": pool})},
            }
            for label, strategy, extra, pool in runs_of
            for seed in args.seeds
        ]  # fmt: skip
        for job in jobs:  # the runs started again; others kept (--only reruns some variants into a report)
            Path(job["path"]).unlink(missing_ok=True)
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            for done in pool.map(_run, jobs):
                print(f"finished {done}", flush=True)
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    if not runs:
        raise SystemExit(f"no runs in {runs_dir}")
    summary = summarize(runs, args.devices, args.final_rounds)
    config = runs[0]["config"]
    report = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "wall_seconds": None if args.summarize else time.perf_counter() - started,
        "setup": {k: v for k, v in config["simulation"].items() if k not in ("strategy", "seed")}
        | {"seeds": sorted({r["seed"] for r in runs}), "genfl": config["genfl"], "jobs": args.jobs},
        "summary": summary,
    }
    write_json(args.out / f"{name}.json", report)
    simulation = config["simulation"]
    title = (f"{Path(str(simulation['dataset'])).name}, {args.devices} devices, "
             f"{'alpha ' + str(simulation['alpha']) if simulation['partition'] == 'dirichlet' else 'shards'}"
             + (f", {simulation['train_subset']} training samples" if simulation["train_subset"] else ""))  # fmt: skip
    plot(summary, args.out / f"{name}.png", title)
    (args.out / f"{name}.md").write_text(results_table(summary, runs))
    for strategy in [n for n in summary if isinstance(summary[n], dict) and "curve_mean" in summary[n]]:
        if strategy in summary:
            entry = summary[strategy]
            final, spread = 100 * entry["final_accuracy_mean"], 100 * entry["final_accuracy_std"]
            print(f"{strategy:10s} final {final:.2f} +- {spread:.2f}  per seed {entry['final_accuracy_per_seed']}"
                  f"  reach {entry['rounds_to_fedavg_final']}  generator {entry['generator_s_per_round']:.1f} s/round"
                  f"  synthetic {entry['synthetic_bytes_per_device_round'] / 1024:.0f} KiB/device/round")  # fmt: skip
    print("targets:", summary.get("targets"))
    if "pool_targets" in summary:
        print("pool targets:", json.dumps(summary["pool_targets"], indent=1))


if __name__ == "__main__":
    main()

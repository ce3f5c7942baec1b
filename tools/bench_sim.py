"""Benchmark: the real multi-process system at simulation speed, and fleets of 10, 100 and 1,000 agents.

Part 1, the same job four ways (digits, 10 devices, Dirichlet 0.5, 10 rounds, 2 local epochs, float training,
the same partitions and initial model): Flower's simulation runtime (if ``flwr`` is importable; otherwise the row
says why it is missing), ``genfl-server simulate --transport local`` and ``--transport mqtt`` (ten agent processes,
one torch-preloaded training pool, the machine's Mosquitto), and the same with five agents to a process. Each is a
whole process, timed from start to exit.

Part 2, fleets of ``cnn-digits`` agents over the machine's Mosquitto for 3 rounds (shards of one class each: a
thousand devices hold one or two digits; this measures the system, not learning), agents in processes of
``--agents-per-process``: seconds per round, peak memory of the whole run (the proportional set size of every
process of the run together, so pages the training pool's forks share count once), updates accepted.

Writes ``OUT/sim.json`` and ``OUT/sim.png``.

    python tools/bench_sim.py --out bench                 # all of it (about 15 minutes on 2 cores)
    python tools/bench_sim.py --fleets 10 100 --out bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._bench_common import machine, write_json

BROKER = "mqtt://127.0.0.1:1883"
JOB = ["--dataset", "digits", "--devices", "10", "--alpha", "0.5", "--rounds", "10", "--local-epochs", "2",
       "--no-qat", "--seed", "0"]  # fmt: skip


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024.0


def timed(command: list[str]) -> dict[str, Any]:
    """Run a command to the end; its wall time and the peak PSS of its process tree (sampled every 0.5 s)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _pss_mb(_descendants(process.pid)))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return {"wall_s": time.perf_counter() - started, "peak_pss_mb": peak[0]}


def simulate(out: Path, *args: str) -> dict[str, Any]:
    run = timed([sys.executable, "-m", "cloud_server", "simulate", *args, "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    run.update(
        rounds=len(rounds),
        seconds_per_round=[round(r["seconds"], 2) for r in rounds],
        accepted=[r["devices"] for r in rounds],
        picked=[r["selected"] for r in rounds],
        final_accuracy=metrics["final_accuracy"],
        model_sha256=__import__("hashlib").sha256((out / "model.safetensors").read_bytes()).hexdigest(),
    )
    return run


def flower_row() -> dict[str, Any]:
    try:
        import flwr  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"flwr is not importable here ({exc}); install it to compare"}
    return {"skipped": "flwr is importable, but its job script is not part of this repository yet"}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    same = report["same_job"]
    names = [n for n in ("local", "mqtt", "mqtt_grouped") if n in same]
    left.bar(names, [same[n]["wall_s"] for n in names], color=["#4c72b0", "#dd8452", "#55a868"][: len(names)])
    left.set_ylabel("whole process, seconds")
    left.set_title("digits, 10 devices, 10 rounds")
    fleets = report["fleets"]
    sizes = sorted(int(k) for k in fleets)
    right.plot(sizes, [sum(fleets[str(k)]["seconds_per_round"]) / fleets[str(k)]["rounds"] for k in sizes], marker="o")
    right.set_xscale("log")
    right.set_xlabel("agents")
    right.set_ylabel("seconds per round")
    right.set_title("fleets over Mosquitto, 3 rounds")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleets", nargs="*", type=int, default=[10, 100, 1000])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-sim"))
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "same_job": {"flower": flower_row()}, "fleets": {}}
    # the in-memory run; ten agent processes (one per board, as deployed); the same ten agents, five to a process
    ways = {"local": ["--transport", "local"], "mqtt": ["--transport", "mqtt", "--broker", BROKER],
            "mqtt_grouped": ["--transport", "mqtt", "--broker", BROKER, "--agents-per-process", "5"]}  # fmt: skip
    for name, extra in ways.items():
        report["same_job"][name] = simulate(args.work / name, *JOB, *extra)
        print(name, {k: v for k, v in report["same_job"][name].items() if k != "seconds_per_round"}, flush=True)
    local = report["same_job"]["local"]
    for name in ("mqtt", "mqtt_grouped"):
        run = report["same_job"][name]
        report["same_job"][f"{name}_over_local"] = run["wall_s"] / local["wall_s"]
        report["same_job"][f"{name}_rounds_over_local"] = sum(run["seconds_per_round"]) / sum(
            local["seconds_per_round"]
        )
        report["same_job"][f"{name}_same_model"] = run["model_sha256"] == local["model_sha256"]
    for size in args.fleets:
        per_process = 1 if size <= 10 else (10 if size <= 100 else 50)
        fleet = [
            "--dataset", "digits", "--devices", str(size), "--partition", "shards", "--classes-per-device", "1",
            "--min-samples", "1", "--rounds", "3", "--seed", "0", "--transport", "mqtt", "--broker", BROKER,
            "--agents-per-process", str(per_process), "--round-timeout", "900",
        ]  # fmt: skip
        run = simulate(args.work / f"fleet-{size}", *fleet)
        run["agents_per_process"] = per_process
        report["fleets"][str(size)] = run
        print(size, {k: v for k, v in run.items() if k != "model_sha256"}, flush=True)
    write_json(args.out / "sim.json", report)
    plot(report, args.out / "sim.png")


if __name__ == "__main__":
    main()

"""Benchmark: resident memory of the agent daemon (idle) and of the training worker (peak), per model.

The daemon runs as `genfl-edge run` against an embedded broker and reports its
RSS in status.json; the worker trains one round of each model in a per-task
worker and reports its peak RSS. Writes ``OUT/memory.json``.

    python tools/bench_memory.py --out bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import models
from cloud_server import EmbeddedBroker
from edge_agent import DeviceDataset, LabeledArrays, save_npz
from edge_agent._process_runner import WorkerRunner
from protocol import Task, TrainConfig, Update, encode_tensors
from tools._bench_common import machine, write_json


def daemon_idle_rss(folder: Path) -> float:
    with EmbeddedBroker() as broker:
        command = [
            sys.executable, "-m", "edge_agent", "run", "--device-id", "probe", "--data", "digits",
            "--state-dir", str(folder / "agent"), "--broker", broker.url, "--status-interval", "0.5",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(8)
            status = json.loads((folder / "agent" / "status.json").read_text())
        finally:
            process.terminate()
            process.wait(timeout=30)
    return float(status["daemon_rss_mb"])


def worker_peak(folder: Path, model_name: str, samples: int) -> float:
    spec = models.get_spec(model_name)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (samples, *spec.input_shape), dtype=np.uint8)
    arrays = LabeledArrays(images, rng.integers(0, spec.num_classes, samples))
    path = folder / f"{model_name}.npz"
    save_npz(DeviceDataset(model_name, tuple(map(str, range(spec.num_classes))), arrays, arrays), path)
    blob = encode_tensors(models.model_state(models.build_model(model_name, seed=0)))
    task = Task(round=1, device_id="probe", model_name=model_name, model_id="0" * 64, model_size=len(blob),
                config=TrainConfig(), classes=tuple("0123456789"))  # fmt: skip
    runner = WorkerRunner("probe", f"npz:{path}", folder / f"work-{model_name}", nice=0)
    outcome: list[object] = []
    runner.start(task, blob, lambda t, o: outcome.append(o))
    while not outcome:
        runner.check()
        time.sleep(0.05)
    if not isinstance(outcome[0], Update):
        raise SystemExit(f"training {model_name} failed: {outcome[0]}")
    assert runner.worker_peak_rss_mb is not None
    return runner.worker_peak_rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {
            "machine": machine(),
            "daemon_idle_rss_mb": daemon_idle_rss(folder),
            "worker_peak_rss_mb": {
                "cnn-digits (1,438 samples)": worker_peak(folder, "cnn-digits", 1438),
                "cnn-small (5,000 samples)": worker_peak(folder, "cnn-small", 5000),
            },
        }
    print(result)
    write_json(args.out / "memory.json", result)


if __name__ == "__main__":
    main()

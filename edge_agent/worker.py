"""The training worker: ``python -m edge_agent.worker``. The only edge process that imports torch.

The agent daemon starts it and sends jobs as JSON lines on stdin; for each
it answers one JSON line on stdout (``{"ok": true}`` or ``{"ok": false,
"error": ...}``). A job names the task frame, the global model blob and where
to write the encoded update (atomically). Logs go to stderr (the journal).

``--describe SPEC`` prints the data set's sample count and label histogram
without importing torch, so the daemon learns them without loading data itself;
``--score MODEL --data SPEC --classes A,B,...`` prints an ONNX model's accuracy on
the held-out slice of the board's data (onnxruntime, no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from protocol import GenflError, Task, atomic_write, decode_message, decode_tensors, encode_message, encode_tensors

from ._data import DeviceDataset, load_dataset
from ._runner import run_task


def describe(spec: str, data_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(spec, data_dir)
    counts = dataset.train.label_counts(dataset.num_classes)
    return {
        "num_samples": len(dataset.train),
        "classes": list(dataset.classes),
        "label_counts": [int(c) for c in counts],
        "input_shape": list(dataset.input_shape),
    }


def _run_job(job: dict[str, Any], cache: dict[str, DeviceDataset]) -> None:
    if job.get("warm_up"):  # load torch and the data now, so that the first round does not wait for them
        from . import _training  # noqa: F401

        job = {**job, "task": None}
    spec = job["data"]
    if spec not in cache:
        cache[spec] = load_dataset(spec, Path(job.get("data_dir", "data")))
    if job["task"] is None:
        return
    task = decode_message(Path(job["task"]).read_bytes(), Task)
    model_blob = Path(job["model"]).read_bytes()
    residual_path = Path(job["out"]).with_name("residual.safetensors")  # error feedback between rounds
    residual = decode_tensors(residual_path.read_bytes()) if residual_path.is_file() else None
    synthetic = Path(job["synthetic"]).read_bytes() if job.get("synthetic") else None
    update, residual = run_task(
        task, model_blob, job["device_id"], cache[spec].train, cache[spec].classes, job.get("torch_device", "cpu"),
        residual, synthetic_blob=synthetic,
    )  # fmt: skip
    if residual is None:
        residual_path.unlink(missing_ok=True)
    else:
        atomic_write(residual_path, encode_tensors(residual))
    out = Path(job["out"])
    atomic_write(out, encode_message(update))


def answer(job: dict[str, Any], cache: dict[str, DeviceDataset]) -> dict[str, Any]:
    """Run one job; the reply line: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``."""
    try:
        _run_job(job, cache)
        return {"ok": True, "peak_rss_mb": _peak_rss_mb()}
    except GenflError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:  # RuntimeError: torch refused the job
        return {"ok": False, "error": f"worker: {type(exc).__name__}: {exc}"}


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.worker")
    parser.add_argument("--describe", metavar="SPEC")
    parser.add_argument("--score", metavar="MODEL", type=Path)
    parser.add_argument("--data", metavar="SPEC")
    parser.add_argument("--classes", metavar="NAMES")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args()
    if args.score:
        from ._release_score import score_release

        try:
            fleet = tuple(args.classes.split(","))
            print(json.dumps({"accuracy": score_release(args.score, load_dataset(args.data, args.data_dir), fleet)}))
        except GenflError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        return 0
    if args.describe:
        try:
            print(json.dumps(describe(args.describe, args.data_dir)), flush=True)
        except GenflError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        return 0
    threads = os.environ.get("GENFL_TORCH_THREADS")
    if threads:  # many workers on few cores: one thread each avoids OpenMP oversubscription
        import torch

        torch.set_num_threads(int(threads))
    cache: dict[str, DeviceDataset] = {}
    for line in sys.stdin:
        try:
            job = json.loads(line)
        except ValueError as exc:
            print(json.dumps({"ok": False, "error": f"worker: not a job ({exc})"}), flush=True)
            continue
        print(json.dumps(answer(job, cache)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: update codecs, QAT -> int8 ONNX accuracy and size, and inference latency.

For each data set: FedAvg with fp32 / int8 / int4 updates (same seeds and
partitions; bytes the devices sent and final accuracy), a QAT run exported to
fp32 and int8 ONNX (test accuracy of PyTorch, ONNX fp32 and ONNX int8; file
sizes; top-1 agreement), and latency: p50 over 500 runs at batch 1 for PyTorch
eager, onnxruntime fp32 and int8, and throughput at batch 64. Writes
``OUT/quant.json``.

    python tools/bench_quant.py --out bench                                  # digits
    python tools/bench_quant.py --dataset zip:../shared/data/cifar10-jpg.zip --train-subset 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort
import torch

import models
from edge_agent import load_dataset
from models._onnx import export_onnx
from simulation import SimulationConfig, run_simulation
from tools._bench_common import machine, write_json


def _p50_ms(run, repeats: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(20):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="Skip the federated runs: export and time this model (e.g. simulate's model.safetensors).",
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = {"dataset": args.dataset, "model": args.model, "rounds": args.rounds, "train_subset": args.train_subset}
    codecs: dict[str, dict[str, float | None]] = {}
    float_accuracy = None
    if args.checkpoint is not None:
        model_name, final_state = models.read_checkpoint(args.checkpoint)
        base = {"dataset": args.dataset, "checkpoint": str(args.checkpoint)}
    else:
        runs = {}
        for codec in ("fp32", "int8", "int4"):  # QAT on the devices, the default
            runs[codec] = result = run_simulation(SimulationConfig(**base, codec=codec))
            codecs[codec] = {
                "bytes_up": sum(r.bytes_up for r in result.rounds),
                "final_accuracy": result.final_accuracy,
            }
            print(codec, codecs[codec], flush=True)
        for codec in ("int8", "int4"):
            codecs[codec]["share_of_fp32_bytes"] = codecs[codec]["bytes_up"] / codecs["fp32"]["bytes_up"]  # type: ignore[operator]
        float_accuracy = run_simulation(SimulationConfig(**base, qat=False)).final_accuracy  # the float path
        print("float training", float_accuracy, flush=True)
        model_name, final_state = runs["fp32"].model_name, runs["fp32"].final_state
    data = load_dataset(args.dataset)
    test = data.test
    model = models.build_model(model_name)
    models.load_state(model, final_state)
    torch_accuracy = models.evaluate(model, test.images, test.labels).accuracy
    exports: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, int8 in (("fp32", False), ("int8", True)):
            path = Path(tmp) / f"{label}.onnx"
            report = export_onnx(model_name, final_state, path, int8=int8, check_images=test.images[:1000],
                                 calibration_images=data.train.images[:512], classes=data.classes)  # fmt: skip
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            logits = np.concatenate([session.run(None, {name: models.to_float(test.images[i:i + 256]).numpy()})[0]
                                     for i in range(0, len(test), 256)])  # fmt: skip
            reference = models.predict_logits(model, test.images).numpy()
            one = models.to_float(test.images[:1]).numpy()
            batch = models.to_float(test.images[:64]).numpy()
            exports[label] = {
                "bytes": report.size_bytes,
                "accuracy": float((logits.argmax(1) == test.labels).mean()),
                "top1_agreement_with_pytorch": float((logits.argmax(1) == reference.argmax(1)).mean()),
                "p50_ms_batch1": _p50_ms(lambda s=session, n=name, x=one: s.run(None, {n: x}), args.repeats),
                "images_per_s_batch64": 64e3 / _p50_ms(lambda s=session, n=name, x=batch: s.run(None, {n: x}), 100),
            }  # fmt: skip
            print(label, exports[label], flush=True)
    model.eval()
    one_t, batch_t = models.to_float(test.images[:1]), models.to_float(test.images[:64])
    with torch.no_grad():
        eager = {
            "accuracy": torch_accuracy,
            "p50_ms_batch1": _p50_ms(lambda: model(one_t), args.repeats),
            "images_per_s_batch64": 64 / (_p50_ms(lambda: model(batch_t), 100) / 1000),
        }
    print("pytorch", eager, flush=True)
    summary = {
        "int8_file_share_of_fp32": exports["int8"]["bytes"] / exports["fp32"]["bytes"],
        "fp32_onnx_speedup_over_eager_batch1": eager["p50_ms_batch1"] / exports["fp32"]["p50_ms_batch1"],
        "int8_vs_fp32_onnx_latency_batch1": exports["int8"]["p50_ms_batch1"] / exports["fp32"]["p50_ms_batch1"],
        "int8_onnx_accuracy_minus_float": exports["int8"]["accuracy"] - torch_accuracy,
    }
    print(summary)
    name = "quant" if args.dataset == "digits" else "quant-" + args.dataset.split(":")[0]
    if args.checkpoint is not None:
        name += "-checkpoint"
    write_json(args.out / f"{name}.json", {"machine": machine(), "config": base, "codecs": codecs,
        "float_training_final_accuracy": float_accuracy, "qat_model": {
        "pytorch": eager, "onnx": exports}, "summary": summary, "torch_threads": 1})  # fmt: skip


if __name__ == "__main__":
    main()

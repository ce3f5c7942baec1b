"""Benchmark: what a model release costs a board in bytes.

For ``cnn-digits`` and ``cnn-small`` (seeded initial weights: the size of an ONNX model does not depend on what
it learned), the int8 and the float ONNX release as ``genfl-server release`` exports them (int8 calibrated on
256 generated images), and the bytes a board receives for it: the model in chunks of the server's default size,
each in its frame, and the release frame.

Then, for fleets of 10 and 100 agents (``genfl-edge``'s agent, ten to a process for 100, the bundled digits
each) on the machine's Mosquitto around a real ``genfl-server serve`` (no round opens: it only hands out
releases), the seconds from ``genfl-server release`` returning (its export done) to the last board running
the release: each board fetches it, scores it on its held-out slice in a short-lived onnxruntime process and
swaps it in.

Writes ``OUT/releases.json``.

    python tools/bench_releases.py --out bench     # about three minutes on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
from models._onnx import export_onnx
from protocol import DEFAULT_CHUNK_SIZE, Release, encode_message, iter_chunks
from tools._bench_common import machine, write_json

BROKER = "mqtt://127.0.0.1:1883"


def _running(folder: Path) -> int | None:
    try:
        return json.loads((folder / "status.json").read_text()).get("release")  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def fleet_run(size: int, work: Path) -> dict[str, Any]:
    """Seconds from ``release`` to the last of ``size`` boards running it."""
    from simulation import SimulationConfig, run_simulation, write_outputs

    work.mkdir(parents=True, exist_ok=True)
    state, fleet = work / "server", f"bench-release-{size}-{int(time.time())}"
    (state / "checkpoints").mkdir(parents=True, exist_ok=True)
    result = run_simulation(SimulationConfig(dataset="digits", devices=4, rounds=1, seed=0, local_epochs=1))
    (state / "checkpoints" / "round-0001.safetensors").write_bytes(
        write_outputs(result, work / "run")["model"].read_bytes()
    )
    python = [sys.executable, "-m"]
    processes = [subprocess.Popen([*python, "cloud_server", "serve", "--state-dir", str(state), "--fleet", fleet,
                                   "--broker", BROKER, "--rounds", "1", "--min-devices", str(size + 1)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    boards = [work / f"board-{i:03d}" for i in range(size)]
    per_process = 1 if size <= 10 else 10
    try:
        for start in range(0, size, per_process):
            agents = [{"device_id": b.name, "fleet": fleet, "broker": BROKER, "data": "digits", "state_dir": str(b),
                       "status_interval": 0.5} for b in boards[start : start + per_process]]  # fmt: skip
            spec = work / f"agents-{start}.json"
            spec.write_text(json.dumps({"agents": agents}))
            processes.append(subprocess.Popen([*python, "simulation.multi", "--spec", str(spec)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        deadline = time.monotonic() + 300
        while not all((b / "status.json").exists() for b in boards) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3.0)  # every board online at the server
        done = subprocess.run([*python, "cloud_server", "release", "--state-dir", str(state), "--round", "1"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        released = time.perf_counter()
        last = None
        while time.perf_counter() - released < 600:
            running = [_running(b) for b in boards]
            if all(r == 1 for r in running):
                last = time.perf_counter() - released
                break
            time.sleep(0.25)
        return {"boards": size, "agents_per_process": per_process, "release": done.stdout.strip(),
                "seconds_to_last_board": None if last is None else round(last, 2),
                "deployed": sum(1 for b in boards if _running(b) == 1)}  # fmt: skip
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--fleets", nargs="*", type=int, default=[10, 100])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-releases"))
    args = parser.parse_args()
    rows = []
    classes = tuple(str(i) for i in range(10))
    for name in ("cnn-digits", "cnn-small"):
        spec = models.get_spec(name)
        state = models.model_state(models.build_model(name, seed=0))
        images = np.random.default_rng(0).integers(0, 256, size=(256, *spec.input_shape), dtype=np.uint8)
        for int8 in (True, False):
            with tempfile.TemporaryDirectory() as work:
                out = Path(work) / "model.onnx"
                export_onnx(name, state, out, int8=int8, check_images=images,
                            calibration_images=images if int8 else None, classes=classes)  # fmt: skip
                model = out.read_bytes()
            release = Release(1, hashlib.sha256(model).hexdigest(), len(model), name, classes, spec.input_shape,
                              int8, 1, None, time.time())  # fmt: skip
            chunks = sum(len(encode_message(c)) for c in iter_chunks(model, DEFAULT_CHUNK_SIZE))
            frame = len(encode_message(release))
            row = {"model": name, "int8": int8, "onnx_bytes": len(model), "release_frame_bytes": frame,
                   "bytes_a_board_receives": chunks + frame}  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    fleets = []
    for size in args.fleets:
        fleets.append(fleet_run(size, args.work / str(size)))
        print(fleets[-1], flush=True)
    write_json(args.out / "releases.json", {"machine": machine(), "chunk_size": DEFAULT_CHUNK_SIZE, "releases": rows,
                                            "fleets": fleets})  # fmt: skip


if __name__ == "__main__":
    main()

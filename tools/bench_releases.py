"""Benchmark: what a model release costs a board in bytes.

For ``cnn-digits`` and ``cnn-small`` (seeded initial weights: the size of an ONNX model does not depend on what
it learned), the int8 and the float ONNX release as ``genfl-server release`` exports them (int8 calibrated on
256 generated images), and the bytes a board receives for it: the model in chunks of the server's default size,
each in its frame, and the release frame. The time from ``release`` to the last board deployed over MQTT is not
measured here yet.

Writes ``OUT/releases.json``.

    python tools/bench_releases.py --out bench     # about half a minute on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
from models._onnx import export_onnx
from protocol import DEFAULT_CHUNK_SIZE, Release, encode_message, iter_chunks
from tools._bench_common import machine, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench"))
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
    write_json(args.out / "releases.json", {"machine": machine(), "chunk_size": DEFAULT_CHUNK_SIZE, "releases": rows})


if __name__ == "__main__":
    main()

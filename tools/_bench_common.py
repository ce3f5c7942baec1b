"""Helpers shared by the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def _cpu() -> dict[str, Any]:
    """The CPU model and whether it has int8 dot-product instructions (they decide int8 ONNX speed)."""
    try:
        text = open("/proc/cpuinfo").read()  # noqa: SIM115 - a tiny read
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu_model": model, "cpu_int8_dot": sorted(f for f in flags if "vnni" in f or f == "avx512bw"),
            "cpu_avx2": "avx2" in flags}  # fmt: skip


def machine() -> dict[str, Any]:
    """What the figures were measured on (figures from different machines are not comparable)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **_cpu(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def noise_for(epsilon: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The noise multiplier that spends ``epsilon`` over ``rounds`` (bisection on the accountant)."""
    from cloud_server.learning._accountant import epsilon_spent

    low, high = 0.05, 100.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if epsilon_spent(middle, sampling_rate, rounds, delta) > epsilon else (low, middle)
    return high

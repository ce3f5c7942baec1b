"""The console scripts as a user runs them: real subprocesses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["genfl-edge", "genfl-server"])
def test_help_and_version(script: str) -> None:
    help_text = subprocess.run([BIN / script, "--help"], capture_output=True, text=True, check=True).stdout
    version = subprocess.run([BIN / script, "--version"], capture_output=True, text=True, check=True).stdout
    assert "Usage" in help_text
    assert version.startswith(f"{script} 0.")


def test_simulate_writes_metrics_and_shows_progress(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [BIN / "genfl-server", "simulate", "--devices", "4", "--rounds", "2", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "round 2: accuracy" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2 and metrics["config"]["devices"] == 4


def test_simulate_bad_input_exits_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [BIN / "genfl-server", "simulate", "--dataset", f"zip:{tmp_path}/nope.zip", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [f"error: zip:{tmp_path}/nope.zip: no such file"]


def test_partition_tool_prints_a_histogram_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "parts.json"
    done = subprocess.run(
        [sys.executable, "tools/partition.py", "--devices", "5", "--alpha", "0.3", "--seed", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert "device-004" in done.stdout
    parts = json.loads(out.read_text())
    assert len(parts["devices"]) == 5
    assert sum(len(d) for d in parts["devices"]) == 1438

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


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        (["genfl-server", "devices", "add", "board-1", "--state-dir", "{tmp}"], 2, "run `genfl-server broker-config`"),
        (["genfl-server", "devices", "revoke", "board-1", "--state-dir", "{tmp}"], 2, "no fleet security"),
        (["genfl-edge", "status", "--home", "{tmp}"], 2, "enroll first"),
        (["genfl-edge", "enroll", "--server", "mqtts://127.0.0.1:1", "--token", "nope", "--home", "{tmp}"], 2,
         "not a genfl enrollment token"),
        (["genfl-edge", "enroll", "--server", "mqtt://127.0.0.1:1883", "--token", "gfl1:f:p:" + "s" * 32,
          "--home", "{tmp}"], 2, "use an mqtts:// server URL"),
        (["genfl-edge", "enroll", "--server", "mqtts://127.0.0.1:1", "--token", "gfl1:f:p:" + "s" * 32,
          "--home", "{tmp}"], 5, "cannot reach the broker"),
    ],
)  # fmt: skip
def test_security_commands_explain_what_is_missing(tmp_path: Path, command: list[str], code: int, message: str) -> None:
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    done = subprocess.run([BIN / args[0], *args[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "edge.toml").exists()


def test_broker_config_then_devices_add_and_list(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    subprocess.run(
        [BIN / "genfl-server", "broker-config", "--out", str(tmp_path / "broker"), "--host", "127.0.0.1",
         "--state-dir", state, "--fleet", "cli"], check=True, capture_output=True,
    )  # fmt: skip
    token = subprocess.run(
        [BIN / "genfl-server", "devices", "add", "board-1", "--state-dir", state, "--expires", "30m"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert token.startswith("gfl1:cli:") and len(token.splitlines()) == 1
    listing = subprocess.run(
        [BIN / "genfl-server", "devices", "list", "--state-dir", state, "--json"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert json.loads(listing) == {"devices": [], "pending_tokens": ["board-1"]}
    bad = subprocess.run(
        [BIN / "genfl-server", "devices", "add", "board-2", "--state-dir", state, "--expires", "soon"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "bad duration" in bad.stderr

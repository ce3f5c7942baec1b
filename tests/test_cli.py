"""The console scripts as a user runs them: real subprocesses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOKEN = "gfl2:f:enroll-0123456789ab:p:" + "s" * 32
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["genfl-edge", "genfl-server"])
def test_help_and_version(script: str) -> None:
    help_text = subprocess.run([BIN / script, "--help"], capture_output=True, text=True, check=True).stdout
    version = subprocess.run([BIN / script, "--version"], capture_output=True, text=True, check=True).stdout
    assert "Usage" in help_text
    assert version.startswith(f"{script} 0.")


@pytest.mark.slow
def test_simulate_writes_metrics_and_shows_progress(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [BIN / "genfl-server", "simulate", "--devices", "4", "--rounds", "2", "--strategy", "fedprox", "--compare",
         "fedavg", "--out", str(out)], capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "fedprox round 2: accuracy" in done.stderr and "fedavg round 2: accuracy" in done.stderr
    verdict = [line for line in done.stderr.splitlines() if line.startswith("verdict: ")]
    assert len(verdict) == 1 and "fedprox" in verdict[0] and "fedavg" in verdict[0] and "points" in verdict[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2 and metrics["config"]["devices"] == 4
    assert metrics["compared"][0]["config"]["strategy"] == "fedavg" and (out / "curve.png").stat().st_size > 0


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
        (["genfl-edge", "enroll", "--server", "mqtt://127.0.0.1:1883", "--token", TOKEN,
          "--home", "{tmp}"], 2, "use an mqtts:// server URL"),
        (["genfl-edge", "enroll", "--server", "mqtts://127.0.0.1:1", "--token", TOKEN,
          "--home", "{tmp}"], 5, "cannot reach the broker"),
    ],
)  # fmt: skip
def test_security_commands_explain_what_is_missing(tmp_path: Path, command: list[str], code: int, message: str) -> None:
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    done = subprocess.run([BIN / args[0], *args[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "edge.toml").exists()


@pytest.mark.slow
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
    assert token.startswith("gfl2:cli:enroll-") and len(token.splitlines()) == 1
    listing = subprocess.run(
        [BIN / "genfl-server", "devices", "list", "--state-dir", state, "--json"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert json.loads(listing) == {"classes": None, "devices": [], "pending_tokens": ["board-1"]}  # no serve yet
    bad = subprocess.run(
        [BIN / "genfl-server", "devices", "add", "board-2", "--state-dir", state, "--expires", "soon"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "bad duration" in bad.stderr


def _defaults(app: object, *path: str) -> dict[str, object]:
    """Each option's parameter name and default, as Typer registered them."""
    import typer.main

    command = typer.main.get_command(app)  # type: ignore[arg-type]
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {param.name: param.default for param in command.params if param.name}


@pytest.mark.parametrize("command", ["simulate", "serve"])
def test_every_setting_is_an_option_with_its_default(command: str) -> None:
    from dataclasses import MISSING

    from cloud_server import ServeConfig
    from cloud_server.cli import app
    from protocol import settings_leaves
    from simulation import SimulationConfig

    config = {"simulate": SimulationConfig, "serve": ServeConfig}[command]
    options = _defaults(app, command)
    leaves = [(path, item) for path, item, _ in settings_leaves(config) if item.metadata["cli"]]
    assert len(leaves) >= 50  # the strategy's, GenFL's (all of them) and the command's own
    for path, item in leaves:
        assert path[-1] in options, f"{command} lacks --{path[-1]}"
        default = options[path[-1]]
        if item.default not in (MISSING, None):
            assert getattr(default, "value", default) == item.default, f"{command} --{path[-1]}"


def test_edge_toml_keys_are_the_run_flag_names(tmp_path: Path) -> None:
    from dataclasses import fields

    from edge_agent._daemon import AgentConfig, load_agent_config
    from edge_agent.cli import app

    flags = set(_defaults(app, "run")) - {"config", "home", "log_level"}
    assert flags <= {item.name for item in fields(AgentConfig)}, flags - {item.name for item in fields(AgentConfig)}
    path = tmp_path / "edge.toml"
    path.write_text('[agent]\ndevice_id = "d"\ndata = "digits"\nstate_dir = "s"\nbackoff_cap = 30\n'
                    'resend_after = 20\nallowed_codecs = ["int8"]\nmin_local_steps = 4\n')  # fmt: skip
    settings = load_agent_config(path, {})
    assert (settings.backoff_cap, settings.resend_after, settings.allowed_codecs) == (30, 20, ("int8",))


def test_the_command_lines_load_without_torch() -> None:
    """Building both apps (every command's options, the settings classes they are made from) must not import
    torch: the administrative commands and --help start in well under a second."""
    import subprocess
    import sys

    code = "import sys, cloud_server.cli, edge_agent.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"

"""``genfl-edge enroll`` and ``genfl-edge status``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edge_agent._daemon import load_agent_config
from edge_agent._enroll import EdgeHome, check_broker, enroll as enroll_board, find_config
from edge_agent._policy import TaskPolicy
from protocol import ConfigError, exit_on_error

HomeOption = Annotated[
    Optional[Path], typer.Option(help="Config, keys and state under this folder (or $GENFL_EDGE_HOME).")
]


def enroll(
    server: Annotated[
        str, typer.Option(help="The fleet's broker, mqtts://HOST:8883 (a cluster: its nodes, comma-separated).")
    ],
    token: Annotated[
        Optional[str],
        typer.Option(
            help="The token `genfl-server devices add` printed; '-' reads it from stdin (keeps it out of ps)."
        ),
    ] = None,
    token_file: Annotated[
        Optional[Path], typer.Option(help="A file holding the token (keeps it out of ps and shell history).")
    ] = None,
    data: Annotated[str, typer.Option(help="This board's data: digits, folder:PATH, zip:PATH, npz:PATH.")] = "digits",
    ca: Annotated[Optional[Path], typer.Option(help="The fleet CA (ca.crt) to pin; default: system CAs.")] = None,
    home: HomeOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server's answer.")] = 30.0,
    force: Annotated[bool, typer.Option(help="Enroll again over an existing config.")] = False,
) -> None:
    """Make this board's key pair, trade the single-use token for its identity, write its config (0600)."""
    with exit_on_error():
        where = EdgeHome.resolve(home)
        text = _token_text(token, token_file)
        settings = enroll_board(server, text, where, data=data, ca_file=ca, timeout_s=timeout, force=force)
        typer.echo(f"enrolled as {settings['device_id']} in fleet {settings['fleet']}")
        typer.echo(f"config: {where.config}  key: {where.key}  state: {where.state_dir}")
        typer.echo(f"next: genfl-edge run{'' if home is None else f' --home {home}'}")


def _token_text(token: str | None, token_file: Path | None) -> str:
    if (token is None) == (token_file is None):
        raise ConfigError("give the token with exactly one of --token-file FILE, --token - (stdin) or --token TEXT")
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the token from {token_file}: {exc}") from exc
    if token == "-":
        return sys.stdin.readline().strip()
    assert token is not None
    return token


def _directory_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while we walk
                total += (Path(root) / name).stat().st_size
    return total


def _agent_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        agent = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return agent if isinstance(agent, dict) else None


def _classes_text(value: object, otherwise: str | None) -> str | None:
    """The class list the agent reported in its status file, comma-joined (``otherwise`` if it reported none)."""
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return ",".join(value)
    return otherwise


def _requirements(policy: TaskPolicy) -> str:
    """The board's task policy in one line: what a task must meet before this board trains it."""
    parts = [f"batch >= {policy.min_batch_size}", f"steps >= {policy.min_local_steps}",
             f"codecs {','.join(policy.allowed_codecs)}"]  # fmt: skip
    if policy.require_qat:
        parts.append("quantization-aware")
    if policy.require_secure_aggregation:
        parts.append("secure aggregation")
    if policy.min_noise_multiplier is not None:
        parts.append(f"DP noise multiplier >= {policy.min_noise_multiplier:g}")
    return "; ".join(parts)


def _release_outcome(value: object) -> str | None:
    """What the agent did with the last release it heard of, as one line."""
    if isinstance(value, list) and len(value) == 2:
        return f"release {value[0]}: {value[1]}"
    return None


def collect_status(config_path: Path) -> dict[str, Any]:
    settings = load_agent_config(config_path, {})
    agent = _agent_status(settings.state_dir)
    pid = None if agent is None else agent.get("pid")
    alive = (
        agent is not None and isinstance(pid, int) and Path(f"/proc/{pid}").exists() and agent.get("state") != "stopped"
    )
    fresh = alive and agent is not None and time.time() - float(agent.get("updated", 0) or 0) < 60
    if fresh and agent is not None and agent.get("connected") is True:
        # The broker makes the login the client id: a probe with the device's login would take over the
        # running agent's session. The agent is logged in right now; that is the answer.
        reachable, authenticated, why = True, True, ""
    else:
        reachable, authenticated, why = check_broker(
            settings.broker, settings.username, settings.password, settings.ca_file
        )
    status: dict[str, Any] = {
        "device_id": settings.device_id,
        "fleet": settings.fleet,
        "server": settings.broker,
        "signed": settings.device_key is not None,
        "broker_reachable": reachable,
        "broker_authenticated": authenticated,
        "broker_error": why or None,
        "data": settings.data,
        "classes": None if settings.classes is None else ",".join(settings.classes),
        "state_dir": str(settings.state_dir),
        "disk_bytes": _directory_bytes(settings.state_dir),
        "disk_free_bytes": shutil.disk_usage(settings.state_dir).free if settings.state_dir.exists() else None,
        "requires": _requirements(settings.policy()),  # what this board asks of a task before it trains it
    }
    if agent is None:
        status.update(agent_running=False, broker_node=None, last_round=None, last_outcome=None, model_held=None,
                      local_samples=None, pending_update_round=None, agent_rss_mb=None, release=None,
                      release_outcome=None)  # fmt: skip
    else:
        outcome = agent.get("last_outcome")
        status.update(
            agent_running=alive,
            agent_state=agent.get("state"),
            broker_node=agent.get("broker_node") if alive else None,  # the cluster node the agent is on
            broker_failovers=agent.get("broker_failovers"),
            status_age_s=round(time.time() - float(agent.get("updated", 0) or 0), 1),
            last_round=outcome[0] if outcome else agent.get("last_round"),
            last_outcome=outcome[1] if outcome else None,
            model_held=agent.get("model_held"),
            local_samples=agent.get("num_samples"),
            classes=_classes_text(agent.get("classes"), status["classes"]),
            pending_update_round=agent.get("pending_round"),
            agent_rss_mb=agent.get("daemon_rss_mb"),
            worker_peak_rss_mb=agent.get("worker_peak_rss_mb"),
            release=agent.get("release"),  # the model release it runs
            release_outcome=_release_outcome(agent.get("release_outcome")),
        )
    return status


def status(
    home: HomeOption = None,
    config: Annotated[Optional[Path], typer.Option(help="An agent config file instead of the home's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Who this board is, whether the broker takes it now, and what the agent did last."""
    with exit_on_error():
        path = config or find_config(home)
        if not path.is_file():
            raise ConfigError(f"no config at {path}: enroll first (genfl-edge enroll) or give --config")
        result = collect_status(path)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        typer.echo(f"{key.replace('_', ' '):>24}: {'-' if value is None else value}")
    if not result["broker_authenticated"]:
        raise typer.Exit(code=5)

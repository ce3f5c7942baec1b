"""``genfl-edge enroll`` and ``genfl-edge status``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edge_agent._daemon import load_agent_config
from edge_agent._enroll import EdgeHome, check_broker
from edge_agent._enroll import enroll as enroll_board
from protocol import ConfigError

from ._errors import exit_on_error

HomeOption = Annotated[
    Optional[Path], typer.Option(help="Config, keys and state under this folder (or $GENFL_EDGE_HOME).")
]


def enroll(
    server: Annotated[str, typer.Option(help="The fleet's broker, mqtts://HOST:8883.")],
    token: Annotated[str, typer.Option(help="The token `genfl-server devices add` printed.")],
    data: Annotated[str, typer.Option(help="This board's data: digits, folder:PATH, zip:PATH, npz:PATH.")] = "digits",
    ca: Annotated[Optional[Path], typer.Option(help="The fleet CA (ca.crt) to pin; default: system CAs.")] = None,
    home: HomeOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server's answer.")] = 30.0,
    force: Annotated[bool, typer.Option(help="Enroll again over an existing config.")] = False,
) -> None:
    """Make this board's key pair, trade the single-use token for its identity, write its config (0600)."""
    with exit_on_error():
        where = EdgeHome.resolve(home)
        settings = enroll_board(server, token, where, data=data, ca_file=ca, timeout_s=timeout, force=force)
        typer.echo(f"enrolled as {settings['device_id']} in fleet {settings['fleet']}")
        typer.echo(f"config: {where.config}  key: {where.key}  state: {where.state_dir}")
        typer.echo(f"next: genfl-edge run{'' if home is None else f' --home {home}'}")


def _directory_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while we walk
                total += (Path(root) / name).stat().st_size
    return total


def collect_status(config_path: Path) -> dict[str, Any]:
    settings = load_agent_config(config_path, {})
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
        "state_dir": str(settings.state_dir),
        "disk_bytes": _directory_bytes(settings.state_dir),
        "disk_free_bytes": shutil.disk_usage(settings.state_dir).free if settings.state_dir.exists() else None,
    }
    agent_file = settings.state_dir / "status.json"
    try:
        agent = json.loads(agent_file.read_text())
    except (OSError, ValueError):
        agent = None
    if agent is None:
        status.update(agent_running=False, last_round=None, last_outcome=None, model_held=None,
                      local_samples=None, pending_update_round=None, agent_rss_mb=None)  # fmt: skip
    else:
        pid = agent.get("pid")
        alive = isinstance(pid, int) and Path(f"/proc/{pid}").exists() and agent.get("state") != "stopped"
        outcome = agent.get("last_outcome")
        status.update(
            agent_running=alive,
            agent_state=agent.get("state"),
            status_age_s=round(time.time() - float(agent.get("updated", 0)), 1),
            last_round=outcome[0] if outcome else agent.get("last_round"),
            last_outcome=outcome[1] if outcome else None,
            model_held=agent.get("model_held"),
            local_samples=agent.get("num_samples"),
            pending_update_round=agent.get("pending_round"),
            agent_rss_mb=agent.get("daemon_rss_mb"),
            worker_peak_rss_mb=agent.get("worker_peak_rss_mb"),
        )
    return status


def status(
    home: HomeOption = None,
    config: Annotated[Optional[Path], typer.Option(help="An agent config file instead of the home's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Who this board is, whether the broker takes it now, and what the agent did last."""
    with exit_on_error():
        path = config or EdgeHome.resolve(home).config
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

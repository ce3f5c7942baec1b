"""``genfl-edge run``: the agent daemon (what the systemd unit starts)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge_agent._daemon import AgentConfig, run_agent

from ._errors import exit_on_error


def run(
    device_id: Annotated[str, typer.Option(help="This device's id (letters, digits, '_', '.', '-').")],
    data: Annotated[str, typer.Option(help="Local data: digits, cifar10, folder:PATH, zip:PATH or npz:PATH.")],
    state_dir: Annotated[Path, typer.Option(help="Where the agent keeps models, the pending update and status.")],
    fleet: Annotated[str, typer.Option(help="Fleet name (the topic prefix genfl/<fleet>/).")] = "default",
    broker: Annotated[str, typer.Option(help="Broker URL, mqtt://HOST:PORT.")] = "mqtt://127.0.0.1:1883",
    data_dir: Annotated[Path, typer.Option(help="Where cifar10 is (or is downloaded to).")] = Path("data"),
    worker: Annotated[str, typer.Option(help="per-task (frees memory between rounds) or persistent.")] = "per-task",
    torch_device: Annotated[str, typer.Option(help="Where the worker trains: cpu or cuda.")] = "cpu",
    share_label_counts: Annotated[bool, typer.Option(help="Send the label histogram to the server.")] = False,
    status_interval: Annotated[float, typer.Option(help="Seconds between status.json rewrites.")] = 5.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the agent: keep the broker session, train each round in a worker process, send updates."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with exit_on_error():
        config = AgentConfig(
            device_id=device_id,
            fleet=fleet,
            broker=broker,
            data=data,
            state_dir=state_dir,
            data_dir=data_dir,
            worker=worker,
            torch_device=torch_device,
            share_label_counts=share_label_counts,
            status_every_s=status_interval,
        )
        code = run_agent(config)
    raise typer.Exit(code=code)

"""``genfl-edge run``: the agent daemon (what the systemd unit starts)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_agent._daemon import AgentConfig, load_agent_config, run_agent
from edge_agent._enroll import find_config
from protocol import exit_on_error, overrides_from


@overrides_from(AgentConfig)
def run(
    overrides: dict[str, object],
    config: Annotated[Optional[Path], typer.Option(help="TOML settings; the flags below override it.")] = None,
    home: Annotated[
        Optional[Path], typer.Option(help="Use the config `enroll` wrote under this folder (or $GENFL_EDGE_HOME).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the agent: keep the broker session, train each round in a worker process, send updates."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with exit_on_error():
        if config is None and "device_id" not in overrides:  # no flags that make a config: the one enroll wrote
            config = find_config(home)
        code = run_agent(load_agent_config(config, overrides))
    raise typer.Exit(code=code)

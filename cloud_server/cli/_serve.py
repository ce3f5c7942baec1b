"""``genfl-server serve``: the coordinator service (what the systemd unit starts)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from cloud_server.ops._serve_config import ServeConfig
from protocol import exit_on_error, options_from


@options_from(ServeConfig)
def serve(
    config: ServeConfig,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run federated rounds for a fleet over MQTT, persisting everything it accepts."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # torch and the model take seconds to load: say what is happening before it
    logging.getLogger("genfl.server").info("starting: loading torch, the model and the state in %s", config.state_dir)
    from cloud_server.ops._serve import run_server

    with exit_on_error():
        code = run_server(config)
    raise typer.Exit(code=code)

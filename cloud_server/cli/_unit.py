"""``genfl-server install-service`` / ``uninstall-service``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cloud_server._unit import UNIT_NAME, default_executable, render_server_unit
from protocol import exit_on_error, install_unit, uninstall_command


def install_service(
    root: Annotated[Path, typer.Option(help="Install under this root (default: the running system).")] = Path("/"),
    gpu: Annotated[bool, typer.Option(help="Let the service use the NVIDIA GPU (for the generator).")] = False,
    broker_dir: Annotated[
        Optional[Path], typer.Option(help="A secured fleet's broker folder (broker-config --out): made writable.")
    ] = None,
    user: Annotated[
        Optional[str], typer.Option(help="Run as this user (a secured fleet: the broker's user); default: dynamic.")
    ] = None,
    now: Annotated[bool, typer.Option(help="Also enable and start it (needs systemd as PID 1).")] = False,
    executable: Annotated[
        Optional[Path], typer.Option(help="The genfl-server the unit runs (default: the one beside this Python).")
    ] = None,
) -> None:
    """Write genfl-server.service and print (or, with --now, run) the systemctl commands."""
    with exit_on_error():
        text = render_server_unit(executable or default_executable(), gpu=gpu, broker_dir=broker_dir, user=user)
        done = install_unit(root, UNIT_NAME, text, now=now)
    for line in done.report(
        "wrote", ran=now, hint="serve options go to /etc/genfl/server.env as GENFL_SERVER_ARGS=...; then run:"
    ):
        typer.echo(line)


uninstall_service = uninstall_command(UNIT_NAME, "/var/lib/genfl-server")

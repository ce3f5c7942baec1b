"""``genfl-edge install-service`` / ``uninstall-service``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_agent._unit import UNIT_NAME, EdgeUnit, default_executable, present_credentials, render_edge_unit
from protocol import exit_on_error, install_unit, uninstall_command


def install_service(
    root: Annotated[Path, typer.Option(help="Install under this root (default: the running system).")] = Path("/"),
    data: Annotated[Optional[str], typer.Option(help="Data spec for ExecStart, e.g. folder:/srv/genfl/data.")] = None,
    user: Annotated[Optional[str], typer.Option(help="Run as this user (default: a dynamic user).")] = None,
    now: Annotated[bool, typer.Option(help="Also enable and start it (needs systemd as PID 1).")] = False,
    executable: Annotated[
        Optional[Path], typer.Option(help="The genfl-edge the unit runs (default: the one beside this Python).")
    ] = None,
) -> None:
    """Write genfl-edge.service and print (or, with --now, run) the systemctl commands."""
    with exit_on_error():
        unit = EdgeUnit(executable or default_executable(), data=data, user=user, credentials=present_credentials(root))
        text = render_edge_unit(unit)
        done = install_unit(root, UNIT_NAME, text, now=now)
    for line in done.report(
        "wrote",
        ran=now,
        hint="settings: /etc/genfl/edge.toml (written by `genfl-edge enroll` as root, or by hand); then run:",
    ):
        typer.echo(line)


uninstall_service = uninstall_command(UNIT_NAME, "/var/lib/genfl-edge")

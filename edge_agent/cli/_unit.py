"""``genfl-edge install-service`` / ``uninstall-service``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_agent._service import UNIT_NAME, EdgeUnit, default_executable, render_edge_unit
from protocol import install_unit, uninstall_unit

from ._errors import exit_on_error


def install_service(
    root: Annotated[Path, typer.Option(help="Install under this root (default: the running system).")] = Path("/"),
    data: Annotated[Optional[str], typer.Option(help="Data spec for ExecStart, e.g. folder:/srv/genfl/data.")] = None,
    user: Annotated[Optional[str], typer.Option(help="Run as this user (default: a dynamic user).")] = None,
    now: Annotated[bool, typer.Option(help="Also enable and start it (needs systemd as PID 1).")] = False,
) -> None:
    """Write genfl-edge.service and print (or, with --now, run) the systemctl commands."""
    with exit_on_error():
        text = render_edge_unit(EdgeUnit(default_executable(), data=data, user=user))
        done = install_unit(root, UNIT_NAME, text, now=now)
    for line in done.report(
        "wrote", ran=now, hint="settings go to /etc/genfl/edge.toml (device_id, fleet, broker, data); then run:"
    ):
        typer.echo(line)


def uninstall_service(
    root: Annotated[Path, typer.Option(help="Remove from under this root.")] = Path("/"),
    now: Annotated[bool, typer.Option(help="Also stop and disable it first (needs systemd as PID 1).")] = False,
) -> None:
    """Remove genfl-edge.service (state in /var/lib/genfl-edge is kept)."""
    with exit_on_error():
        done = uninstall_unit(root, UNIT_NAME, now=now)
    for line in done.report("removed", ran=now):
        typer.echo(line)

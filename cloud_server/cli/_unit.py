"""``genfl-server install-service`` / ``uninstall-service``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cloud_server.ops._unit import (
    SYNC_NAME,
    UNIT_NAME,
    default_executable,
    owner_name,
    render_broker_sync_units,
    render_server_unit,
)
from protocol import check_can_run, exit_on_error, install_unit, run_systemctl, uninstall_command


def install_service(
    root: Annotated[Path, typer.Option(help="Install under this root (default: the running system).")] = Path("/"),
    gpu: Annotated[bool, typer.Option(help="Let the service use the NVIDIA GPU (for the generator).")] = False,
    broker_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="A secured fleet's broker folder (broker-config --out): also install genfl-broker-sync, "
            "which puts the server's broker files there."
        ),
    ] = None,
    user: Annotated[
        Optional[str], typer.Option(help="Run as this user (never the broker's); default: a dynamic user.")
    ] = None,
    now: Annotated[bool, typer.Option(help="Also enable and start it (needs systemd as PID 1).")] = False,
    executable: Annotated[
        Optional[Path], typer.Option(help="The genfl-server the unit runs (default: the one beside this Python).")
    ] = None,
) -> None:
    """Write genfl-server.service (and, with --broker-dir, genfl-broker-sync) and print (or, with --now, run)
    the systemctl commands."""
    from cloud_server.fleet._security import use_outbox

    with exit_on_error():
        if now:
            check_can_run(root)
        program = executable or default_executable()
        on_disk = root / broker_dir.relative_to("/") if broker_dir is not None and broker_dir.is_absolute() else None
        owner = None if on_disk is None else owner_name(on_disk)
        text = render_server_unit(program, gpu=gpu, broker_dir=broker_dir, user=user, broker_owner=owner)
        units = {UNIT_NAME: text}
        if broker_dir is not None:
            # the unit's state folder, as seen from ``root``: the server writes the broker's files there from now on
            state = root / "var/lib/genfl-server"
            watched, fleet = use_outbox(state)
            # A dynamic user's state lives in /var/lib/private (systemd moves it there and links its name to it):
            # the root sync unit names the real folder, since it follows no link
            real_state = Path("/var/lib/private/genfl-server" if user is None else "/var/lib/genfl-server")
            units.update(render_broker_sync_units(program, broker_dir, real_state / watched.relative_to(state), fleet))
        done = [install_unit(root, name, unit_text, now=False) for name, unit_text in units.items()]
        enable = [name for name in units if not name.endswith(f"{SYNC_NAME}.service")]  # the path unit starts it
        commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", *enable]]
        if now:
            run_systemctl(root, commands)
    for install in done:
        typer.echo(f"wrote {install.path}")
    if not now:
        typer.echo("serve options go to /etc/genfl/server.env as GENFL_SERVER_ARGS=...; then run:")
        for command in commands:
            typer.echo("  " + " ".join(command))


uninstall_service = uninstall_command(
    UNIT_NAME, "/var/lib/genfl-server", also=(f"{SYNC_NAME}.path", f"{SYNC_NAME}.service")
)

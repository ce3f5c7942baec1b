"""The ``genfl-server`` Typer app: global options and command registration."""

from __future__ import annotations

from typing import Annotated

import typer

from cloud_server import __version__

from . import _devices, _export, _serve, _service, _simulate

app = typer.Typer(
    name="genfl-server",
    help="genfl-edge cloud server: federated rounds, aggregation, generator, simulation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("simulate")(_simulate.simulate)
app.command("serve")(_serve.serve)
app.command("export")(_export.export)
app.add_typer(_devices.devices_app, name="devices")
app.command("broker-config")(_devices.broker_config)
app.command("install-service")(_service.install_service)
app.command("uninstall-service")(_service.uninstall_service)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"genfl-server {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """genfl-edge cloud server."""


def main() -> None:
    app()

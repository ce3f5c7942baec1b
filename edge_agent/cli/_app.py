"""The ``genfl-edge`` Typer app: global options and command registration."""

from __future__ import annotations

from typing import Annotated

import typer

from edge_agent import __version__

from . import _data, _enroll, _predict, _run, _service

app = typer.Typer(
    name="genfl-edge",
    help="genfl-edge device agent: trains on the data this board holds; the data never leaves it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("enroll")(_enroll.enroll)
app.command("status")(_enroll.status)
app.command("data")(_data.data)
app.command("run")(_run.run)
app.command("predict")(_predict.predict)
app.command("export")(_predict.export)
app.command("install-service")(_service.install_service)
app.command("uninstall-service")(_service.uninstall_service)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"genfl-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """genfl-edge device agent."""


def main() -> None:
    app()

"""The ``genfl-edge`` Typer app: command registration (each command imports what it needs when it runs)."""

from __future__ import annotations

from edge_agent import __version__
from protocol import new_app

from . import _data, _enroll, _predict, _run, _unit

app = new_app("genfl-edge", "genfl-edge device agent: trains on the data this board holds; the data never leaves it.",
              __version__)  # fmt: skip
for _command in (_enroll.enroll, _enroll.status, _data.data, _run.run, _predict.predict, _predict.export,
                 _unit.install_service, _unit.uninstall_service):  # fmt: skip
    app.command()(_command)  # named after the function: install_service is `install-service`


def main() -> None:
    app()

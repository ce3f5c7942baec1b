"""The ``genfl-edge`` Typer app: command registration (each command imports what it needs when it runs)."""

from __future__ import annotations

from edge_agent import __version__
from protocol import new_app

from . import _data, _enroll, _predict, _run, _unit

app = new_app("genfl-edge", "genfl-edge device agent: trains on the data this board holds; the data never leaves it.",
              __version__)  # fmt: skip
app.command("enroll")(_enroll.enroll)
app.command("status")(_enroll.status)
app.command("data")(_data.data)
app.command("run")(_run.run)
app.command("predict")(_predict.predict)
app.command("export")(_predict.export)
app.command("install-service")(_unit.install_service)
app.command("uninstall-service")(_unit.uninstall_service)


def main() -> None:
    app()

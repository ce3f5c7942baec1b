"""The ``genfl-server`` Typer app: command registration (each command imports what it needs when it runs).

Commands of other packages join through the ``genfl_server.commands`` entry points (``simulate``, from the
simulation package, which no production package imports).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from cloud_server import __version__
from protocol import new_app

from . import _cluster, _devices, _export, _pool, _releases, _serve, _unit

app = new_app("genfl-server", "genfl-edge cloud server: federated rounds, aggregation, generator, simulation.",
              __version__)  # fmt: skip
for _entry in sorted(entry_points(group="genfl_server.commands"), key=lambda e: e.name):
    app.command(_entry.name)(_entry.load())
for _command in (_serve.serve, _export.export, _releases.release, _releases.releases, _releases.rollback,
                 _pool.generate_pool, _devices.broker_config, _devices.broker_sync, _cluster.cluster_config,
                 _unit.install_service, _unit.uninstall_service):  # fmt: skip
    app.command()(_command)  # named after the function: generate_pool is `generate-pool`
app.add_typer(_devices.devices_app, name="devices")


def main() -> None:
    app()

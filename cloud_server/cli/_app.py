"""The ``genfl-server`` Typer app: command registration (each command imports what it needs when it runs).

Commands of other packages join through the ``genfl_server.commands`` entry points (``simulate``, from the
simulation package, which no production package imports).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from cloud_server import __version__
from protocol import new_app

from . import _cluster, _devices, _export, _pool, _serve, _unit

app = new_app("genfl-server", "genfl-edge cloud server: federated rounds, aggregation, generator, simulation.",
              __version__)  # fmt: skip
for _entry in sorted(entry_points(group="genfl_server.commands"), key=lambda e: e.name):
    app.command(_entry.name)(_entry.load())
app.command("serve")(_serve.serve)
app.command("export")(_export.export)
app.command("generate-pool")(_pool.generate_pool)
app.add_typer(_devices.devices_app, name="devices")
app.command("broker-config")(_devices.broker_config)
app.command("broker-sync")(_devices.broker_sync)
app.command("cluster-config")(_cluster.cluster_config)
app.command("install-service")(_unit.install_service)
app.command("uninstall-service")(_unit.uninstall_service)


def main() -> None:
    app()

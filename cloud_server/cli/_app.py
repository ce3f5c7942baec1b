"""The ``genfl-server`` Typer app: command registration (each command imports what it needs when it runs)."""

from __future__ import annotations

from cloud_server import __version__
from protocol import new_app

from . import _cluster, _devices, _export, _pool, _serve, _simulate, _unit

app = new_app("genfl-server", "genfl-edge cloud server: federated rounds, aggregation, generator, simulation.",
              __version__)  # fmt: skip
app.command("simulate")(_simulate.simulate)
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

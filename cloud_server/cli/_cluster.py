"""``genfl-server cluster-config``: the configs of a NATS cluster that carries the fleet over MQTT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cloud_server.broker._cluster import ClusterSpec
from protocol import exit_on_error, options_from


@options_from(ClusterSpec)
def cluster_config(
    spec: ClusterSpec,
    out: Annotated[Path, typer.Option(help="Folder for n1.conf, n2.conf, ..., genfl-nats@.service, brokers.txt.")],
) -> None:
    """Write a NATS cluster's configs: MQTT on every node, sessions and retained states replicated in JetStream."""
    from cloud_server.broker._cluster import write_cluster_config

    with exit_on_error():
        files = write_cluster_config(spec, out)
    for path in files.configs:
        typer.echo(f"node config:   {path}")
    typer.echo(f"systemd unit:  {files.unit}  (install to /etc/systemd/system, configs to /etc/genfl-nats/)")
    typer.echo(f"start a node:  nats-server -c {files.configs[0]}   or   systemctl enable --now genfl-nats@n1")
    typer.echo(f"--broker:      {files.brokers}")

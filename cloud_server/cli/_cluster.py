"""``genfl-server cluster-config``: the configs of a NATS cluster that carries the fleet over MQTT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from protocol import DEFAULT_CHUNK_SIZE, exit_on_error


def cluster_config(
    out: Annotated[Path, typer.Option(help="Folder for n1.conf, n2.conf, ..., genfl-nats@.service, brokers.txt.")],
    nodes: Annotated[int, typer.Option(help="Nodes in the cluster (3 survives losing one).")] = 3,
    hosts: Annotated[
        Optional[str], typer.Option(help="Comma-separated host of each node (default: all on 127.0.0.1).")
    ] = None,
    mqtt_port: Annotated[int, typer.Option(help="MQTT port (nodes sharing a host count up from it).")] = 1883,
    client_port: Annotated[int, typer.Option(help="NATS client port.")] = 4222,
    cluster_port: Annotated[int, typer.Option(help="Port of the routes between the nodes.")] = 6222,
    monitor_port: Annotated[int, typer.Option(help="HTTP monitoring port (/healthz, /varz).")] = 8222,
    chunk_size: Annotated[
        int, typer.Option(help="The fleet's blob chunk size (serve --chunk-size), bytes.")
    ] = DEFAULT_CHUNK_SIZE,
    max_payload: Annotated[
        Optional[int], typer.Option(help="Largest message, bytes (default: 4 MiB, or a chunk's frame if larger).")
    ] = None,
    store_dir: Annotated[str, typer.Option(help="JetStream store root on each node.")] = "/var/lib/genfl-nats",
    name: Annotated[str, typer.Option(help="Cluster name.")] = "genfl",
) -> None:
    """Write a NATS cluster's configs: MQTT on every node, sessions and retained states replicated in JetStream."""
    from cloud_server.broker._cluster import ClusterSpec, write_cluster_config

    with exit_on_error():
        spec = ClusterSpec(
            nodes=nodes,
            hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()) if hosts else (),
            client_port=client_port,
            cluster_port=cluster_port,
            mqtt_port=mqtt_port,
            monitor_port=monitor_port,
            chunk_size=chunk_size,
            max_payload=max_payload,
            store_dir=store_dir,
            name=name,
        )
        files = write_cluster_config(spec, out)
    for path in files.configs:
        typer.echo(f"node config:   {path}")
    typer.echo(f"systemd unit:  {files.unit}  (install to /etc/systemd/system, configs to /etc/genfl-nats/)")
    typer.echo(f"start a node:  nats-server -c {files.configs[0]}   or   systemctl enable --now genfl-nats@n1")
    typer.echo(f"--broker:      {files.brokers}")

"""``genfl-server cluster-config``: the configs of a NATS cluster that carries the fleet over MQTT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cloud_server.broker._cluster import ClusterSpec
from protocol import ConfigError, exit_on_error, options_from


@options_from(ClusterSpec)
def cluster_config(
    spec: ClusterSpec,
    out: Annotated[
        Path, typer.Option(help="Folder for n1.conf, n2.conf, ..., genfl-nats@.service, brokers.txt (and keys).")
    ],
    state_dir: Annotated[
        Optional[Path],
        typer.Option(help="The server's state dir: a secured cluster (TLS, the fleet's logins) for its fleet."),
    ] = None,
    fleet: Annotated[str, typer.Option(help="Fleet name (with --state-dir).")] = "default",
    open_cluster: Annotated[
        bool,
        typer.Option(
            "--open", help="No TLS, no logins: anyone who reaches a node reads and writes the fleet (a private trial)."
        ),
    ] = False,
    ca_cert: Annotated[Optional[Path], typer.Option(help="Your own CA certificate (PEM) instead of a new CA.")] = None,
    ca_key: Annotated[Optional[Path], typer.Option(help="Its EC private key (PEM).")] = None,
    broker_user: Annotated[
        Optional[str], typer.Option(help="The user the nodes run as (it must read the keys); default: you.")
    ] = None,
    reload_command: Annotated[
        Optional[str],
        typer.Option(help="How to make every node re-read accounts.conf (default: SIGHUP to the nodes' pid files)."),
    ] = None,
) -> None:
    """Write a NATS cluster's configs: MQTT on every node, sessions and retained states replicated in JetStream.

    With --state-dir the cluster is the fleet's broker: TLS from the fleet CA on every listener (routes mutual),
    a login per device confined to its topics, the server in an account of its own; enrollments and revocations
    update it as they do a Mosquitto broker's files."""
    with exit_on_error():
        if state_dir is None and not open_cluster:
            raise ConfigError(
                "give --state-dir (a secured cluster for the fleet of that server) or --open (an anonymous cluster "
                "for a trial on a private network)"
            )
        if state_dir is not None and open_cluster:
            raise ConfigError("--open and --state-dir exclude each other")
        if state_dir is None:
            from cloud_server.broker._cluster import write_cluster_config

            files = write_cluster_config(spec, out)
        else:
            from cloud_server.fleet._security import write_cluster_setup

            files = write_cluster_setup(
                state_dir, spec, out, fleet=fleet, ca_cert=ca_cert, ca_key=ca_key, broker_user=broker_user,
                reload_command=tuple(reload_command.split()) if reload_command else (),
            )  # fmt: skip
    for path in files.configs:
        typer.echo(f"node config:   {path}")
    typer.echo(f"systemd unit:  {files.unit}  (install to /etc/systemd/system)")
    typer.echo(f"start a node:  nats-server -c {files.configs[0]}   or   systemctl enable --now genfl-nats@n1")
    typer.echo(f"--broker:      {files.brokers}")
    if state_dir is not None:
        typer.echo(f"run the server: genfl-server serve --state-dir {state_dir}")
        typer.echo(f"give boards:   {out / 'ca.crt'} and a token from `genfl-server devices add NAME --state-dir ...`")
    else:
        typer.echo("OPEN cluster: anyone who reaches a node's MQTT port reads and writes every fleet topic")

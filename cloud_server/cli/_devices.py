"""``genfl-server devices add|list|revoke`` and ``genfl-server broker-config``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cloud_server.ops._fleet_view import fleet_classes, fleet_rows
from cloud_server.rounds._limits import DEFAULT_MAX_PACKET_SIZE
from protocol import ConfigError, exit_on_error, write_secret

if TYPE_CHECKING:
    from cloud_server.fleet._security import FleetSecurity

devices_app = typer.Typer(help="Enroll, list and revoke the fleet's devices.", no_args_is_help=True)

StateDir = Annotated[Path, typer.Option(help="The server's state dir (the one `serve` uses).")]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"bad duration {text!r}: use a number and s, m, h or d (e.g. 24h)")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _security(state_dir: Path) -> FleetSecurity:
    from cloud_server.fleet._security import FleetSecurity  # cryptography and the registry: only when a command runs

    security = FleetSecurity.load(state_dir)
    if security is None:
        raise ConfigError(f"{state_dir} has no fleet security yet: run `genfl-server broker-config` first")
    return security


@devices_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The device's id (letters, digits, '_', '.', '-').")],
    state_dir: StateDir,
    expires: Annotated[str, typer.Option(help="How long the token is valid: 30m, 24h, 7d.")] = "24h",
    readmit: Annotated[
        bool, typer.Option(help="A token for a revoked device's name: the board enrolls again with a new key.")
    ] = False,
    out: Annotated[
        Optional[Path], typer.Option(help="Write the token to this file (mode 0600) instead of printing it.")
    ] = None,
) -> None:
    """Print a single-use enrollment token for a new device (only its hash is stored)."""
    with exit_on_error():
        security = _security(state_dir)
        try:
            token, note = security.new_token(name, parse_duration(expires), readmit=readmit)
        finally:
            security.close()
    if out is None:
        typer.echo(token)
    else:
        with exit_on_error():
            try:
                write_secret(out, (token + "\n").encode())
            except OSError as exc:  # the token is stored only as its hash: unusable now, it expires unused
                raise ConfigError(f"cannot write the token to {out}: {exc}; run devices add again") from exc
        typer.echo(f"token for {name} written to {out} (mode 0600)", err=True)
    if note:
        typer.echo(f"the broker has not taken the token's login yet: {note}", err=True)
    typer.echo(
        f"on the board: genfl-edge enroll --server {security.url} --token-file FILE --ca ca.crt "
        "(FILE holds the line above; --token - reads it from stdin)",
        err=True,
    )


@devices_app.command("list")
def list_devices(
    state_dir: StateDir,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list.")] = False,
) -> None:
    """The fleet's classes, then every device: online/offline (from its last will), last seen, rounds, last
    update, revoked, the classes it holds (when it shares its label counts). An open fleet lists those that spoke."""
    with exit_on_error():
        from cloud_server.fleet._security import FleetSecurity

        if not (state_dir / "state.sqlite3").exists() and FleetSecurity.load(state_dir) is None:
            raise ConfigError(f"{state_dir} holds no fleet state yet: serve writes it (or broker-config, secured)")
        security = FleetSecurity.load(state_dir)
        pending: list[tuple[str, float]] = []
        if security is not None:
            try:
                pending = security.registry.pending_tokens()
            finally:
                security.close()
        rows = fleet_rows(state_dir)
        classes = fleet_classes(state_dir)
    if as_json:
        document = {"classes": None if classes is None else list(classes), "devices": rows,
                    "pending_tokens": [n for n, _ in pending]}  # fmt: skip
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(f"fleet classes: {'(not set yet: serve names them)' if classes is None else ', '.join(classes)}")
    typer.echo(f"{'device':<20} {'state':<8} {'last seen':<20} {'rounds':>6} {'norm':>8} {'acc':>6}  revoked  holds")
    for row in rows:
        seen = row["last_seen"]
        when = "-" if seen is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seen))
        norm = "-" if row["last_update_norm"] is None else f"{row['last_update_norm']:.3g}"
        acc = "-" if row["last_update_accuracy"] is None else f"{row['last_update_accuracy']:.3f}"
        state = "online" if row["online"] else "offline"
        held = "-" if row["classes_held"] is None else ",".join(row["classes_held"])
        typer.echo(f"{row['device_id']:<20} {state:<8} {when:<20} {row['rounds']:>6} {norm:>8} {acc:>6}  "
                   f"{'yes' if row['revoked'] else 'no':<7}  {held}")  # fmt: skip
    for name, expires in pending:
        typer.echo(
            f"{name:<20} (token not used yet; expires {time.strftime('%Y-%m-%d %H:%M', time.localtime(expires))})"
        )


@devices_app.command("revoke")
def revoke(
    device_id: Annotated[str, typer.Argument(help="The device (or the name of a token not used yet) to cut off.")],
    state_dir: StateDir,
) -> None:
    """Cut a device off: the broker drops and refuses it, the coordinator refuses its updates; a token for the
    name that was not used yet is cancelled."""
    with exit_on_error():
        security = _security(state_dir)
        try:
            done, note = security.revoke(device_id)
        finally:
            security.close()
    typer.echo(f"{device_id}: {done}" + (f"; the broker has not taken it yet: {note}" if note else ""))


def broker_config(
    out: Annotated[Path, typer.Option(help="Folder for mosquitto.conf, certificates, passwd and acl.")],
    host: Annotated[str, typer.Option(help="Name or IP devices use to reach the broker (in its certificate).")],
    state_dir: StateDir,
    fleet: Annotated[str, typer.Option(help="Fleet name.")] = "default",
    port: Annotated[int, typer.Option(help="TLS listener port.")] = 8883,
    bind: Annotated[str, typer.Option(help="Address the listener binds to (default: all).")] = "",
    ca_cert: Annotated[Optional[Path], typer.Option(help="Your own CA certificate (PEM) instead of a new CA.")] = None,
    ca_key: Annotated[Optional[Path], typer.Option(help="Its EC private key (PEM).")] = None,
    broker_user: Annotated[
        Optional[str], typer.Option(help="The user Mosquitto runs as (it must read the files); default: you.")
    ] = None,
    reload_command: Annotated[
        Optional[str], typer.Option(help="How to make the broker re-read its files (default: SIGHUP to its pid).")
    ] = None,
    max_packet_size: Annotated[
        int, typer.Option(help="Largest MQTT packet the broker takes, bytes (an update of the largest model).")
    ] = DEFAULT_MAX_PACKET_SIZE,
) -> None:
    """Write a Mosquitto setup for a secured fleet: TLS listener, password file, per-device ACL."""
    from cloud_server.fleet._security import write_broker_config

    with exit_on_error():
        setup = write_broker_config(
            state_dir, out, fleet=fleet, host=host, port=port, bind=bind, ca_cert=ca_cert, ca_key=ca_key,
            reload_command=tuple(reload_command.split()) if reload_command else (), broker_user=broker_user,
            max_packet_size=max_packet_size,
        )  # fmt: skip
    typer.echo(f"wrote {setup.directory}/mosquitto.conf (TLS on {setup.url})")
    typer.echo(f"run the broker:   mosquitto -c {setup.directory.resolve()}/mosquitto.conf")
    typer.echo(f"run the server:   genfl-server serve --state-dir {state_dir}")
    typer.echo(f"give boards:      {setup.ca_file} and a token from `genfl-server devices add NAME --state-dir ...`")


def broker_sync(
    outbox: Annotated[Path, typer.Option(help="The server's outbox (STATE/security/broker-outbox).")],
    broker_dir: Annotated[Path, typer.Option(help="The broker's folder (broker-config --out).")],
    fleet: Annotated[str, typer.Option(help="The fleet: every ACL rule must lie in its topics.")],
) -> None:
    """Install the broker files the server left in its outbox into the broker's folder, and reload the broker
    (what genfl-broker-sync.service runs, as root, each time the server writes them; it reads nothing else of the
    server's state)."""
    from cloud_server.broker._broker_files import install_outbox

    with exit_on_error():
        reloaded = install_outbox(outbox, broker_dir, fleet)
    typer.echo(
        f"installed the server's passwd and acl in {broker_dir}" + ("" if reloaded else "; no broker runs from it")
    )

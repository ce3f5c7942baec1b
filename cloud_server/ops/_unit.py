"""The systemd unit of the coordinator, rendered for this installation."""

from __future__ import annotations

import pwd
from pathlib import Path

from protocol import (
    ConfigError,
    check_executable_reachable,
    check_reachable,
    find_executable,
    render_unit,
    service_lifecycle,
    validate_name,
)

__all__ = [
    "SYNC_NAME",
    "UNIT_NAME",
    "default_executable",
    "owner_name",
    "render_broker_sync_units",
    "render_server_unit",
]

UNIT_NAME = "genfl-server.service"

_TEMPLATE = """\
# genfl-server: federated rounds, aggregation and the generator for a fleet.
# Written by `genfl-server install-service`; `genfl-server uninstall-service` removes it.
# Put the serve options (fleet, broker, rounds, ...) in /etc/genfl/server.env as
#   GENFL_SERVER_ARGS=--fleet plant-3 --broker mqtt://broker.local:1883 --rounds 1000
{head}EnvironmentFile=-/etc/genfl/server.env
ExecStart={executable} serve --state-dir /var/lib/genfl-server $GENFL_SERVER_ARGS
{lifecycle}{broker}MemoryMax=16G
TasksMax=1024

{hardening}{gpu}\
# Not set on purpose: MemoryDenyWriteExecute= (torch's CPU kernels and CUDA generate code at run time).

[Install]
WantedBy=multi-user.target
"""

_GPU = """\
# The generator's GPUs: the NVIDIA device nodes only (every GPU, /dev/nvidia0..N, and the control nodes), by the
# driver's device groups in /proc/devices.
PrivateDevices=no
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia-uvm rw
DeviceAllow=char-nvidia-caps rw
DeviceAllow=/dev/nvidiactl rw
DeviceAllow=/dev/nvidia-uvm rw
DeviceAllow=/dev/nvidia-uvm-tools rw
"""


def default_executable() -> Path:
    return find_executable("genfl-server")


_BROKER = """\
# A secured fleet: enrollments and revocations change the broker's password file and ACL. The server writes
# them into its own state (security/broker-outbox); genfl-broker-sync.path sees the change and the root
# genfl-broker-sync.service installs them in {directory} and reloads the broker. The server never runs as the
# broker's user, who would then own the fleet's CA and signing keys.
"""

SYNC_NAME = "genfl-broker-sync"

_SYNC_PATH = """\
# genfl-server: start genfl-broker-sync.service when the server has written new broker files.
# Written by `genfl-server install-service --broker-dir`.
[Unit]
Description=genfl-edge: watch the broker files the server writes
Documentation=https://github.com/genfl-edge/genfl-edge

[Path]
PathChanged={watched}
Unit={name}.service

[Install]
WantedBy=multi-user.target
"""

_SYNC_SERVICE = """\
# genfl-server: install the password file and ACL the server wrote (checked line by line) into the broker's
# folder, owned by the broker's user, and have the broker re-read them.
# Written by `genfl-server install-service --broker-dir`; started by {name}.path.
[Unit]
Description=genfl-edge: install the server's broker files and reload the broker
Documentation=https://github.com/genfl-edge/genfl-edge

[Service]
Type=oneshot
# Every argument is the unit's (root's): nothing of the server's state but the two files is trusted.
ExecStart={executable} broker-sync --outbox {outbox} --broker-dir {directory} --fleet {fleet}
# Root with only what the job takes: read the server's outbox, write the broker's folder as its owner, signal it.
CapabilityBoundingSet=CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_KILL
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={directory}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateNetwork=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX
RestrictNamespaces=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
UMask=0077
"""


def render_server_unit(
    executable: Path,
    gpu: bool = False,
    broker_dir: Path | None = None,
    user: str | None = None,
    broker_owner: str | None = None,
) -> str:
    """The unit; ``broker_owner`` is the user who owns ``broker_dir`` (the broker's), never the unit's user."""
    check_executable_reachable(executable)
    if broker_dir is not None and not broker_dir.is_absolute():
        raise ConfigError(f"--broker-dir must be an absolute path, got {broker_dir}")
    if broker_dir is not None:
        check_reachable(broker_dir, "the broker folder")
    lifecycle = service_lifecycle("genfl-server", 30, user)
    if user is not None and user == broker_owner:
        raise ConfigError(
            f"{user} owns the broker folder {broker_dir}: run as that user, the server would hand the broker's "
            "user its CA and signing keys. Leave --user out: the server runs as its own user and "
            f"{SYNC_NAME}.service installs the broker's files"
        )
    return render_unit(
        _TEMPLATE, "genfl-edge federated learning server", lifecycle, executable,
        gpu=_GPU if gpu else "", broker="" if broker_dir is None else _BROKER.format(directory=broker_dir),
    )  # fmt: skip


def render_broker_sync_units(executable: Path, broker_dir: Path, watched: Path, fleet: str) -> dict[str, str]:
    """The path unit that watches ``watched`` (the outbox's ACL) and the root service that installs the files."""
    check_executable_reachable(executable)
    check_reachable(broker_dir, "the broker folder")
    validate_name("fleet", fleet)
    return {
        f"{SYNC_NAME}.path": _SYNC_PATH.format(watched=watched, name=SYNC_NAME),
        f"{SYNC_NAME}.service": _SYNC_SERVICE.format(
            executable=executable, directory=broker_dir, name=SYNC_NAME, outbox=watched.parent, fleet=fleet
        ),
    }


def owner_name(path: Path) -> str | None:
    """The user name (or uid) that owns ``path``; None if there is no such path."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

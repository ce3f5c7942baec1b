"""The systemd unit of the coordinator, rendered for this installation."""

from __future__ import annotations

from pathlib import Path

from protocol import HARDENING, ConfigError, check_reachable, find_executable, unit_head

__all__ = ["UNIT_NAME", "default_executable", "render_server_unit"]

UNIT_NAME = "genfl-server.service"

_TEMPLATE = """\
# genfl-server: federated rounds, aggregation and the generator for a fleet.
# Written by `genfl-server install-service`; `genfl-server uninstall-service` removes it.
# Put the serve options (fleet, broker, rounds, ...) in /etc/genfl/server.env as
#   GENFL_SERVER_ARGS=--fleet plant-3 --broker mqtt://broker.local:1883 --rounds 1000
{head}EnvironmentFile=-/etc/genfl/server.env
ExecStart={executable} serve --state-dir /var/lib/genfl-server $GENFL_SERVER_ARGS
WatchdogSec=60
Restart=on-failure
RestartSec=10
TimeoutStopSec=30
KillMode=mixed

{user}
StateDirectory=genfl-server
StateDirectoryMode=0700
WorkingDirectory=/var/lib/genfl-server
{broker}MemoryMax=16G
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
# A secured fleet: enrollments and revocations rewrite the broker's password file and ACL here, and the
# server signals the broker to re-read them, so it runs as the broker's user (broker-config --broker-user).
ReadWritePaths={directory}
"""


def render_server_unit(
    executable: Path, gpu: bool = False, broker_dir: Path | None = None, user: str | None = None
) -> str:
    """The unit; ``broker_dir`` (a secured fleet's broker files) is the one path outside its state it writes."""
    check_reachable(executable, "the executable")
    if broker_dir is not None and not broker_dir.is_absolute():
        raise ConfigError(f"--broker-dir must be an absolute path, got {broker_dir}")
    if broker_dir is not None:
        check_reachable(broker_dir, "the broker folder")
    if user is not None and not user.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"invalid user name {user!r}")
    return _TEMPLATE.format(
        head=unit_head("genfl-edge federated learning server"),
        executable=executable,
        hardening=HARDENING,
        gpu=_GPU if gpu else "",
        user="DynamicUser=yes" if user is None else f"User={user}\nGroup={user}",
        broker="" if broker_dir is None else _BROKER.format(directory=broker_dir),
    )

"""The systemd unit of the agent, rendered for this installation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol import HARDENING, ConfigError, find_executable

__all__ = ["EdgeUnit", "UNIT_NAME", "render_edge_unit"]

UNIT_NAME = "genfl-edge.service"
CONFIG_PATH = Path("/etc/genfl/edge.toml")

_TEMPLATE = """\
# genfl-edge agent: trains on this board's data, talks to the server over MQTT.
# Written by `genfl-edge install-service`; `genfl-edge uninstall-service` removes it.
[Unit]
Description=genfl-edge federated learning agent
Documentation=https://github.com/genfl-edge/genfl-edge
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
WatchdogSec=60
Restart=on-failure
RestartSec=10
# SIGTERM lets a running training finish (the agent's --stop-grace); then everything is stopped.
TimeoutStopSec=45
KillMode=mixed

{user}
StateDirectory=genfl-edge
StateDirectoryMode=0700
ConfigurationDirectory=genfl
ConfigurationDirectoryMode=0750
WorkingDirectory=/var/lib/genfl-edge
{data}
# A board: bounded memory and CPU; the training worker lowers its own priority further.
MemoryMax=1500M
CPUQuota=150%
Nice=5
TasksMax=256

{hardening}# Not set on purpose: MemoryDenyWriteExecute= (torch's oneDNN kernels are generated at run time).

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class EdgeUnit:
    executable: Path
    data: str | None = None
    user: str | None = None


def default_executable() -> Path:
    return find_executable("genfl-edge")


def render_edge_unit(unit: EdgeUnit) -> str:
    exec_start = f"{unit.executable} run --config {CONFIG_PATH} --state-dir /var/lib/genfl-edge"
    data_lines = ""
    if unit.data is not None:
        kind, _, path = unit.data.partition(":")
        exec_start += f" --data {unit.data}"
        if kind in ("folder", "zip", "npz") and path:
            if not Path(path).is_absolute():
                raise ConfigError(f"--data must name an absolute path for a service, got {path!r}")
            data_lines = f"# The device's data, read-only.\nReadOnlyPaths={path}\n"
    if unit.user is None:
        user = "DynamicUser=yes"
    else:
        if not unit.user.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"invalid user name {unit.user!r}")
        user = f"User={unit.user}\nGroup={unit.user}"
    return _TEMPLATE.format(exec_start=exec_start, user=user, data=data_lines, hardening=HARDENING)

"""The systemd unit of the agent, rendered for this installation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol import ConfigError, check_reachable, find_executable, render_unit, service_lifecycle

__all__ = ["CREDENTIALS", "EdgeUnit", "UNIT_NAME", "present_credentials", "render_edge_unit"]

UNIT_NAME = "genfl-edge.service"
CONFIG_DIR = Path("/etc/genfl")
# What `genfl-edge enroll` writes as root (0600 root): systemd hands copies to the service's dynamic user as
# credentials (LoadCredential=), in a folder only that user can read; the config names the others relative to it.
CREDENTIALS = ("edge.toml", "device.key", "ca.crt")

_STOP_NOTE = "# SIGTERM lets a running training finish (the agent's --stop-grace); then everything is stopped.\n"
_TEMPLATE = """\
# genfl-edge agent: trains on this board's data, talks to the server over MQTT.
# Written by `genfl-edge install-service`; `genfl-edge uninstall-service` removes it.
{head}ExecStart={exec_start}
{lifecycle}# The config, the board's key and the fleet CA stay root-only in /etc/genfl; the service reads copies in %d.
{credentials}
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
    credentials: tuple[str, ...] = ("edge.toml",)  # which of CREDENTIALS exist in /etc/genfl


def default_executable() -> Path:
    return find_executable("genfl-edge")


def present_credentials(root: Path) -> tuple[str, ...]:
    """Which of the enrolled files are in ``root``/etc/genfl (an open fleet has a config and no key); ConfigError
    before there is a config: a unit written then would lack the credentials enroll writes later."""
    folder = root / CONFIG_DIR.relative_to("/")
    if not (folder / "edge.toml").is_file():
        raise ConfigError(
            f"no {folder / 'edge.toml'} yet: enroll first (sudo genfl-edge enroll ...; or write it by hand for an "
            "open fleet), then install the service, so that its unit loads the board's key and CA"
        )
    return tuple(name for name in CREDENTIALS if (folder / name).is_file())


def render_edge_unit(unit: EdgeUnit) -> str:
    exec_start = f"{unit.executable} run --config %d/edge.toml --state-dir /var/lib/genfl-edge"
    data_lines = ""
    if unit.data is not None:
        kind, _, path = unit.data.partition(":")
        exec_start += f" --data {unit.data}"
        if kind in ("folder", "zip", "npz") and path:
            if not Path(path).is_absolute():
                raise ConfigError(f"--data must name an absolute path for a service, got {path!r}")
            check_reachable(Path(path), "the data")
            data_lines = f"# The device's data, read-only.\nReadOnlyPaths={path}\n"
    lifecycle = service_lifecycle("genfl-edge", 45, unit.user, _STOP_NOTE)
    unknown = sorted(set(unit.credentials) - set(CREDENTIALS))
    if unknown or "edge.toml" not in unit.credentials:
        raise ConfigError(f"credentials must include edge.toml and be among {CREDENTIALS}, got {unit.credentials}")
    credentials = "\n".join(f"LoadCredential={name}:{CONFIG_DIR / name}" for name in unit.credentials)
    return render_unit(_TEMPLATE, "genfl-edge federated learning agent", lifecycle, unit.executable,
                       exec_start=exec_start, data=data_lines, credentials=credentials)  # fmt: skip

"""systemd integration shared by both services: sd_notify and unit installation.

sd_notify is a datagram to the socket named in ``NOTIFY_SOCKET`` (a path, or
an abstract name starting with ``@``); with no such variable every call is a
no-op, so the same code runs under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ._blobs import atomic_write
from ._errors import ConfigError

# The sandbox both units share (systemd.exec(5)); each unit adds its own paths, limits and devices.
HARDENING = """\
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
UMask=0077
"""


def service_lifecycle(state_name: str, stop_timeout_s: int, user: str | None, stop_note: str = "") -> str:
    """The [Service] lines both units share: the watchdog, restarts, how a stop ends, who runs it (a dynamic
    user without ``user``) and its state folder, /var/lib/``state_name``."""
    if user is not None and not user.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"invalid user name {user!r}")
    runs_as = "DynamicUser=yes" if user is None else f"User={user}\nGroup={user}"
    return (
        f"WatchdogSec=60\nRestart=on-failure\nRestartSec=10\n{stop_note}TimeoutStopSec={stop_timeout_s}\n"
        f"KillMode=mixed\n\n{runs_as}\nStateDirectory={state_name}\nStateDirectoryMode=0700\n"
        f"WorkingDirectory=/var/lib/{state_name}\n"
    )


def render_unit(template: str, description: str, lifecycle: str, executable: Path, **fields: object) -> str:
    """A unit from its template: the [Unit] head, the shared [Service] lines and the hardening filled in, for an
    ``executable`` the hardened service can reach (ConfigError if it cannot)."""
    check_executable_reachable(executable)
    return template.format(
        head=unit_head(description), lifecycle=lifecycle, hardening=HARDENING, executable=executable, **fields
    )


__all__ = [
    "HARDENING",
    "render_unit",
    "service_lifecycle",
    "Notifier",
    "UnitInstall",
    "check_can_run",
    "check_executable_reachable",
    "check_reachable",
    "find_executable",
    "install_unit",
    "run_systemctl",
    "systemd_is_running",
    "uninstall_unit",
    "unit_head",
]


class Notifier:
    """READY / STATUS / WATCHDOG / STOPPING for ``Type=notify`` units."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises.
        self._watchdog_every_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def _send(self, message: str) -> None:
        if self._socket is None:
            return
        with contextlib.suppress(OSError):  # systemd went away (or a test closed its socket)
            self._socket.sendto(message.encode(), self._address)

    def ready(self, status: str) -> None:
        self._status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping if the unit has a watchdog and half its interval has passed; cheap to call often."""
        if self._watchdog_every_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self._watchdog_every_s:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def find_executable(name: str) -> Path:
    """The console script ``name`` next to this Python (a venv's bin), else the one on PATH."""
    import sys

    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"cannot find the {name} executable; install the package first")
    return Path(found)


# Where the hardened units cannot see (HARDENING above): an executable or data path there fails at start.
_OUT_OF_REACH = {
    Path("/tmp"): "PrivateTmp=yes gives the service a /tmp of its own",
    Path("/var/tmp"): "PrivateTmp=yes gives the service a /var/tmp of its own",
    Path("/home"): "ProtectHome=yes hides home folders",
    Path("/root"): "ProtectHome=yes hides home folders",
    Path("/run/user"): "ProtectHome=yes hides home folders",
}


def check_reachable(path: Path, what: str) -> None:
    """ConfigError if the hardened service could not reach ``path`` (an executable, its data), saying why."""
    absolute = Path(os.path.abspath(path))
    for folder, why in _OUT_OF_REACH.items():
        if absolute == folder or folder in absolute.parents:
            raise ConfigError(
                f"{what} {path} is out of the service's reach ({why}): put it elsewhere (the package in, say, "
                "/opt/genfl/venv; data in /srv/genfl)"
            )


SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's PATH for a service
# pip's script when the #! line would be too long: #!/bin/sh, then '''exec' "/path/to/python" "$0" "$@"
_PIP_TRAMPOLINE = re.compile(rb"^'''exec' \"?([^\"\s]+)\"? ")


def check_executable_reachable(executable: Path) -> None:
    """:func:`check_reachable` for an executable, the file its links lead to, the interpreter it names (its
    ``#!`` line, through ``/usr/bin/env`` and pip's ``/bin/sh`` trampoline) and the Python a virtual environment's
    interpreter is made from (``home`` in ``pyvenv.cfg``): a venv is often made from a pyenv under ``/root``,
    which ``ProtectHome=yes`` hides, and the unit would fail at start with ``Permission denied``."""
    check_reachable(executable, "the executable")
    real = Path(os.path.realpath(executable))
    check_reachable(real, f"the executable {executable} is a link to a file that")
    interpreter = _interpreter(real)
    if interpreter is None:
        return
    check_reachable(interpreter, f"the interpreter of {executable}")
    check_reachable(Path(os.path.realpath(interpreter)), f"the interpreter of {executable} links to a file that")
    for config in (interpreter.parent / "pyvenv.cfg", interpreter.parent.parent / "pyvenv.cfg"):
        try:
            lines = config.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key.strip() == "home" and value.strip():
                check_reachable(Path(value.strip()), f"the Python that the environment of {interpreter} is made of,")
        break


def _interpreter(script: Path) -> Path | None:
    """The program a script's first lines run (None for a binary, or one that cannot be read)."""
    try:
        with open(script, "rb") as file:
            first, second = file.readline(512), file.readline(4096)
    except OSError:
        return None  # not there (yet): systemd says so at start
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if not words:
        return None
    if words[0] in ("/bin/sh", "/usr/bin/sh") and (match := _PIP_TRAMPOLINE.match(second)):
        return Path(match.group(1).decode("utf-8", "replace"))
    if Path(words[0]).name == "env":
        names = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
        found = shutil.which(names[0], path=SERVICE_PATH) if names else None
        return Path(found) if found else None  # none on its PATH: systemd says so at start
    return Path(words[0])


def systemd_is_running() -> bool:
    """True when systemd is PID 1 (sd_booted(3))."""
    return Path("/run/systemd/system").is_dir()


@dataclass(frozen=True)
class UnitInstall:
    path: Path
    commands: list[list[str]]
    done: bool = True  # False: there was nothing to do (no unit to remove)

    def report(self, action: str, ran: bool, hint: str = "") -> list[str]:
        """Lines for the person at the terminal: what was done, and what to run next."""
        if not self.done:
            return [f"no {self.path}: nothing was {action}"]
        lines = [f"{action} {self.path}"]
        if not ran:
            lines += [hint] if hint else []
            lines += ["  " + " ".join(command) for command in self.commands]
        return lines


def unit_head(description: str) -> str:
    """What both units open with: the [Unit] section (restarts bounded) and a notify service's first lines."""
    return (
        "[Unit]\n"
        f"Description={description}\n"
        "Documentation=https://github.com/genfl-edge/genfl-edge\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "StartLimitIntervalSec=600\n"
        "StartLimitBurst=5\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
    )


def install_unit(root: Path, name: str, text: str, now: bool = False) -> UnitInstall:
    """Write ``name`` under ``root``/etc/systemd/system; with ``now``, enable and start it."""
    if now:
        check_can_run(root)
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / name
    atomic_write(path, text.encode(), mode=0o644)
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", name]]
    if now:
        run_systemctl(root, commands)
    return UnitInstall(path, commands)


def uninstall_unit(root: Path, name: str, now: bool = False) -> UnitInstall:
    """Remove the unit (after ``systemctl disable --now`` with ``now``); with none there, nothing is done."""
    path = root / "etc" / "systemd" / "system" / name
    if not path.exists():
        return UnitInstall(path, [], done=False)
    commands = [["systemctl", "disable", "--now", name], ["systemctl", "daemon-reload"]]
    if now:
        check_can_run(root)
        run_systemctl(root, commands[:1])
    path.unlink(missing_ok=True)
    if now:
        run_systemctl(root, commands[1:])
    return UnitInstall(path, commands)


def check_can_run(root: Path) -> None:
    """ConfigError unless systemctl can act on ``root`` now (the running system under systemd)."""
    if root.resolve() != Path("/"):
        raise ConfigError("--now only works with --root / (the running system)")
    if not systemd_is_running() or shutil.which("systemctl") is None:
        raise ConfigError("--now needs systemd as PID 1; run the printed systemctl commands yourself")


def run_systemctl(root: Path, commands: list[list[str]]) -> None:
    check_can_run(root)
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"{' '.join(command)} failed: {done.stderr.strip()}")

"""One ``serve`` per state folder: an exclusive lock on ``STATE_DIR/serve.lock``, held while it runs.

Two coordinators on one state would knock each other off the broker (the broker lets one client id in at a
time), re-send the same tasks and write the same journal. The lock is an ``flock`` on a file in the folder:
the kernel drops it when the process ends however it ends, so a crash never leaves a stale lock behind.
The file names the holder (pid, host, start time) for the error the next one prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from protocol import ConfigError

__all__ = ["LOCK_NAME", "StateInUse", "holding_state"]

LOCK_NAME = "serve.lock"


class StateInUse(ConfigError):
    """Another process serves from this state folder."""


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text()[:4096])
        return f"pid {int(holder['pid'])} on {str(holder['host'])[:64]}, since {str(holder['since'])[:32]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not say who it is"


@contextmanager
def holding_state(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir``'s serve lock for the body; StateInUse at once if another process holds it."""
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot use state dir {state_dir}: cannot open its lock file {LOCK_NAME} ({exc})") from exc
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateInUse(
                f"{state_dir} is in use by another genfl-server serve ({_holder(path)}): stop it first; "
                "two servers on one state knock each other off the broker"
            ) from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(handle)  # closing the descriptor releases the lock

"""Real processes for system tests: agents, servers, and ways to wait for them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocol import BrokerAddress

ENV = {**os.environ, "GENFL_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"}
FAST_TRAINING = ("--local-epochs", "1")


# The folders of the process groups now running: their logs growing is the system making progress.
_WATCHED: list[Path] = []
PATIENCE = 5  # a wait that sees progress goes on up to this many times its timeout (at most 5 minutes more)


def _progress() -> int:
    total = 0
    for folder in list(_WATCHED):
        for log in folder.glob("*.log"):
            with suppress(OSError):
                total += log.stat().st_size
    return total


def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    progress: Callable[[], object] | None = None,
) -> Any:
    """``predicate()``'s first true value; AssertionError after ``timeout_s`` without progress. Progress (a running
    process's log growing, or ``progress()`` changing: a round closing, a message arriving) restarts the wait, up to
    PATIENCE times ``timeout_s`` in all, so that a loaded machine makes a test slower, not red."""
    started = time.monotonic()
    deadline = started + timeout_s
    seen = (_progress(), progress() if progress else None)
    limit = started + min(PATIENCE * timeout_s, timeout_s + 300)
    while time.monotonic() < min(deadline, limit):
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
        now = (_progress(), progress() if progress else None)
        if now != seen:
            seen, deadline = now, time.monotonic() + timeout_s
    waited = time.monotonic() - started
    raise AssertionError(f"timed out after {waited:.0f} s waiting for {what} ({timeout_s:.0f} s without progress)")


class Processes:
    """Started processes, each logging to a file; all are killed at the end of the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        _WATCHED.append(folder)
        self.cleanup: list[Callable[[], object]] = []  # run after every process is stopped

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=ENV)
        log.close()
        self.running[name] = process
        return process

    def agent(
        self, name: str, device_id: str, fleet: str, broker: str, data: str, *extra: str, state: str | None = None
    ) -> subprocess.Popen[bytes]:
        """An agent process; its state folder is ``state`` (default: ``name``) under the test's folder.

        Its training worker is kept between rounds (``--worker persistent``) unless ``extra`` says otherwise: a
        board's default, a fresh worker a round, imports torch each round (about 4 s of CPU on this machine, a
        fifth of the suite's time over its system tests); the tests of that mode ask for it."""
        worker = () if "--worker" in extra else ("--worker", "persistent")
        return self.start(
            name, "-m", "edge_agent", "run", "--device-id", device_id, "--fleet", fleet, "--broker", broker,
            "--data", data, "--state-dir", str(self.folder / (state or name)), *worker, *extra,
        )  # fmt: skip

    def server(self, name: str, state_dir: Path, fleet: str, *extra: str) -> subprocess.Popen[bytes]:
        """A real `genfl-server serve`; one local epoch unless ``extra`` says otherwise (the last flag wins): a
        system test checks the system, and a second epoch only doubles every board's training time."""
        return self.start(name, "-m", "cloud_server", "serve", "--state-dir", str(state_dir), "--fleet", fleet,
                          *FAST_TRAINING, *extra)  # fmt: skip

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for action in self.cleanup:
            action()
        if self.folder in _WATCHED:
            _WATCHED.remove(self.folder)


@contextmanager
def processes(folder: Path) -> Iterator[Processes]:
    group = Processes(folder)
    try:
        yield group
    finally:
        group.stop_all()


@contextmanager
def mqtt_client(url: str, client_id: str) -> Iterator[paho.Client]:
    """A plain paho client, as an outsider (or an attacker) would use."""
    address = BrokerAddress.parse(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def clear_retained(url: str, fleet: str, device_ids: list[str]) -> None:
    with mqtt_client(url, f"{fleet}-cleaner") as client:
        for device_id in device_ids:
            client.publish(f"genfl/{fleet}/devices/{device_id}/state", b"", qos=1, retain=True).wait_for_publish(5)


def artifacts_dir() -> Path:
    """Where tests leave what a person looks at after a run (a screenshot, a report): ``runs/test-artifacts``
    (ignored by git), or ``GENFL_TEST_ARTIFACTS``."""
    folder = Path(
        os.environ.get("GENFL_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "runs" / "test-artifacts")
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip for what this machine lacks (a broker, root, an interpreter another user can run); in CI
    (`.ci/run` sets GENFL_REQUIRE_MOSQUITTO=1), where the machine has all of it, fail instead."""
    if os.environ.get("GENFL_REQUIRE_MOSQUITTO") == "1":
        pytest.fail(f"{reason}, and GENFL_REQUIRE_MOSQUITTO=1")
    pytest.skip(f"{reason}; GENFL_REQUIRE_MOSQUITTO=1 makes this a failure")


NOBODY = 65534


def as_nobody(*args: str) -> list[str]:
    """``args`` run as uid/gid nobody, without supplementary groups (a service's own user stands in)."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *args]


def python_for_nobody() -> tuple[str, dict[str, str]] | None:
    """An interpreter uid nobody can run, that runs this project (and can start its own workers).

    This test's interpreter may live where only root can reach (a pyenv under /root); then the system's
    Python of the same version is given the virtual environment's packages and the checkout."""
    nested = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', 'import edge_agent']).returncode)"
    site = next(p for p in sys.path if p.endswith("site-packages"))
    checkout = str(Path(__file__).resolve().parents[2])
    candidates = [(sys.executable, ENV), (f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
                                          {**ENV, "PYTHONPATH": f"{site}:{checkout}"})]  # fmt: skip
    for python, env in candidates:
        probe = subprocess.run(as_nobody(python, "-c", nested), capture_output=True, env=env, cwd="/")
        if probe.returncode == 0:
            return python, env
    return None


def nobody_python_or_skip(why: str) -> tuple[str, dict[str, str]]:
    """:func:`python_for_nobody`, or a skip (a failure under CI) saying ``why`` root is needed, or that no
    Python here serves uid nobody."""
    if os.geteuid() != 0:
        skip_unless_ci(f"{why}: needs root (CI runs as root)")
    found = python_for_nobody()
    if found is None:
        skip_unless_ci(f"no Python here that uid {NOBODY} can run with this project")
    return found

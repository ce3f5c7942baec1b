"""An embedded broker for a machine without one: ``mosquitto`` if on PATH, else amqtt in-process.

Mosquitto is about six times faster on loopback (see the design notes), so it
is preferred; amqtt keeps ``make demo`` working on a machine with nothing but
Python. Either listens on 127.0.0.1 and a free port (the machine's own
broker may hold 1883), anonymous, with nothing persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from protocol import TransportError

__all__ = ["EmbeddedBroker", "free_port"]

log = logging.getLogger("genfl.broker")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class EmbeddedBroker:
    def __init__(self, port: int | None = None, kind: str = "auto") -> None:
        if kind not in ("auto", "mosquitto", "amqtt"):
            raise ValueError(f"broker kind must be auto, mosquitto or amqtt, got {kind!r}")
        self.port = port or free_port()
        self.kind = (
            "mosquitto" if kind == "auto" and shutil.which("mosquitto") else ("amqtt" if kind == "auto" else kind)
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._amqtt: Any = None

    @property
    def url(self) -> str:
        # amqtt speaks MQTT 3.1.1 only; the URL tells every client so.
        return f"mqtt://127.0.0.1:{self.port}" + ("" if self.kind == "mosquitto" else "?version=3.1.1")

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        if self.kind == "mosquitto":
            self._start_mosquitto()
            ready = _wait_for_port(self.port, 10.0)
        else:
            # No probe connection here: amqtt logs an error for a connection that sends nothing.
            ready = self._start_amqtt()
        if not ready:
            self.stop()
            raise TransportError(f"the embedded {self.kind} broker did not open port {self.port}")
        log.info("embedded %s broker listening on %s", self.kind, self.url)
        return self.url

    def _start_mosquitto(self) -> None:
        binary = shutil.which("mosquitto")
        if binary is None:
            raise TransportError("mosquitto is not on PATH")
        self._dir = tempfile.TemporaryDirectory(prefix="genfl-broker-")
        config = Path(self._dir.name) / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\nmax_inflight_messages 100\nlog_type error\nlog_type warning\n"
        )
        self._process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL)

    def _start_amqtt(self) -> bool:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._amqtt = Broker(config, loop=self._loop)
            self._loop.run_until_complete(self._amqtt.start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        return started.wait(10.0)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._loop is not None and self._amqtt is not None:
            future = asyncio.run_coroutine_threadsafe(self._amqtt.shutdown(), self._loop)
            with contextlib.suppress(Exception):  # a broker that fails to shut down cleanly is gone anyway
                future.result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._loop.close()
            self._loop = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

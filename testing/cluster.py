"""A cluster spec's nodes as ``nats-server`` processes on this machine (tests, benchmarks, a trial)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from cloud_server.broker._cluster import ClusterSpec, NodeAddress, write_cluster_config
from protocol import DEFAULT_CHUNK_SIZE, TransportError

__all__ = ["LocalCluster", "free_loopback_spec"]


def _healthy(node: NodeAddress, *, strict: bool) -> bool:
    """``/healthz`` answers 200: with ``strict`` every stream and consumer on the node is current (a new
    cluster); without, the node's JetStream has joined the cluster's meta group (a node that restarts
    catches up on streams of clients that are gone, which can take long and is no reason to wait)."""
    query = "" if strict else "?js-server-only=true"
    try:
        with urllib.request.urlopen(f"http://{node.host}:{node.monitor_port}/healthz{query}", timeout=1.0) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


class LocalCluster:
    """The nodes of ``spec`` as ``nats-server`` processes on this machine (tests, benchmarks, a trial)."""

    def __init__(
        self,
        spec: ClusterSpec,
        folder: Path,
        executable: str | None = None,
        *,
        state_dir: Path | None = None,
        fleet: str | None = None,
    ) -> None:
        """With ``state_dir`` and ``fleet``: the fleet's secured cluster (``cluster-config --state-dir``)."""
        found = executable or shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")
        if found is None:
            raise TransportError("nats-server is not installed (Debian: apt install nats-server)")
        self.spec = spec
        self.folder = folder
        self.executable = found
        if state_dir is not None and fleet is not None:
            from cloud_server.fleet._security import write_cluster_setup

            self.files = write_cluster_setup(state_dir, spec, folder, fleet=fleet, store_root=folder / "store")
        else:
            self.files = write_cluster_config(spec, folder, store_root=folder / "store")
        self.nodes = spec.addresses()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def brokers(self) -> str:
        return self.files.brokers

    def start(self, timeout_s: float = 60.0) -> None:
        for node in self.nodes:
            self.start_node(node.name)
        self.wait_healthy([node.name for node in self.nodes], timeout_s, strict=True)

    def start_node(self, name: str) -> None:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - closed right after the start
        try:
            self.processes[name] = subprocess.Popen(
                [self.executable, "-c", str(self.folder / f"{name}.conf")], stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()

    def wait_healthy(self, names: list[str], timeout_s: float, *, strict: bool = False) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = [node for node in self.nodes if node.name in names]
        while waiting:
            for node in list(waiting):
                process = self.processes.get(node.name)
                if process is not None and process.poll() is not None:
                    raise TransportError(f"nats-server {node.name} exited: {self.log_tail(node.name)}")
                if _healthy(node, strict=strict):
                    waiting.remove(node)
            if waiting and time.monotonic() > deadline:
                names_left = ", ".join(node.name for node in waiting)
                raise TransportError(f"NATS nodes {names_left} not healthy after {timeout_s:.0f} s")
            if waiting:
                time.sleep(0.2)

    def mqtt_clients(self, timeout_s: float = 10.0) -> dict[str, list[str]]:
        """The MQTT client ids connected to each node that is up (from its monitoring ``/connz``; a node that is down
        refuses at once, one that is slow on a loaded machine gets ``timeout_s``)."""
        clients: dict[str, list[str]] = {}
        for node in self.nodes:
            url = f"http://{node.host}:{node.monitor_port}/connz?limit=100000"
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as reply:
                    connections = json.load(reply).get("connections") or []
            except (OSError, ValueError):
                continue
            clients[node.name] = sorted(c["mqtt_client"] for c in connections if c.get("mqtt_client"))
        return clients

    def kill(self, name: str) -> None:
        """SIGKILL one node: no goodbye to its clients or its peers."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.folder / f"{name}.log"
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_loopback_spec(nodes: int = 3, *, chunk_size: int = DEFAULT_CHUNK_SIZE, attempts: int = 50) -> ClusterSpec:
    """A spec for ``nodes`` nodes on 127.0.0.1 whose 4 x ``nodes`` consecutive ports are all free now."""
    import random
    import socket

    for _ in range(attempts):
        base = random.randrange(20_000, 60_000, 100)
        ports = [base + offset * 20 + index for offset in range(4) for index in range(nodes)]
        try:
            with contextlib.ExitStack() as stack:
                for port in ports:
                    probe = stack.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return ClusterSpec(nodes=nodes, client_port=base, cluster_port=base + 20, mqtt_port=base + 40,
                           monitor_port=base + 60, chunk_size=chunk_size)  # fmt: skip
    raise TransportError(f"no {4 * nodes} free loopback ports found for a local cluster")

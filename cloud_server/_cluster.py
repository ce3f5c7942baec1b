"""A clustered broker: NATS with JetStream and MQTT on every node.

One Mosquitto is one process on one host. NATS servers cluster: each node
speaks MQTT 3.1.1 (QoS 1, retained messages, persistent sessions), and keeps
sessions and retained messages in JetStream streams replicated to every node,
so a client whose node dies reconnects to another one and finds its session
there. :func:`write_cluster_config` writes one config per node (and a systemd
template unit); :class:`LocalCluster` runs such configs as processes on this
machine, for tests and benchmarks.

NATS maps MQTT topics to its subjects: a topic must not hold ``.`` or a space
(NATS 2.9 refuses them), so on NATS fleet and device names use letters,
digits, ``-`` and ``_`` only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from protocol import DEFAULT_CHUNK_SIZE, ConfigError, TransportError, atomic_write

from ._limits import DEFAULT_MAX_PACKET_SIZE

__all__ = [
    "ClusterSpec",
    "LocalCluster",
    "NodeAddress",
    "free_loopback_spec",
    "render_node_config",
    "render_unit_template",
    "write_cluster_config",
]

_NATS_MAX_PAYLOAD = 64 * 1024 * 1024  # nats-server refuses a larger max_payload
_FRAME_HEADROOM = 64 * 1024  # a frame's header and signature around a chunk


@dataclass(frozen=True)
class NodeAddress:
    name: str
    host: str
    client_port: int  # NATS clients (and the cluster's health checks)
    cluster_port: int  # routes between the nodes
    mqtt_port: int
    monitor_port: int  # HTTP: /healthz, /varz

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}?version=3.1.1"  # NATS speaks MQTT 3.1.1


@dataclass(frozen=True)
class ClusterSpec:
    """What ``genfl-server cluster-config`` writes. Nodes on one host get consecutive ports."""

    nodes: int = 3
    hosts: tuple[str, ...] = ()  # one per node, or one for all; empty: 127.0.0.1
    client_port: int = 4222
    cluster_port: int = 6222
    mqtt_port: int = 1883
    monitor_port: int = 8222
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_payload: int | None = None  # bytes; None: the project's default packet, or the chunk size if larger
    store_dir: str = "/var/lib/genfl-nats"
    name: str = "genfl"

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 32:
            raise ConfigError(f"a cluster has 1..32 nodes, got {self.nodes}")
        if self.hosts and len(self.hosts) not in (1, self.nodes):
            raise ConfigError(f"give one host for every node ({self.nodes}) or one for all, got {len(self.hosts)}")
        for port in (self.client_port, self.cluster_port, self.mqtt_port, self.monitor_port):
            if not 0 < port <= 65535 - self.nodes:
                raise ConfigError(f"port {port} out of range")
        if not 1024 <= self.chunk_size <= _NATS_MAX_PAYLOAD - _FRAME_HEADROOM:
            raise ConfigError(f"chunk size must be 1 KiB..{(_NATS_MAX_PAYLOAD - _FRAME_HEADROOM) // 1024} KiB")
        if self.payload_limit > _NATS_MAX_PAYLOAD:
            raise ConfigError(f"max payload {self.payload_limit} B is over NATS's limit of {_NATS_MAX_PAYLOAD} B")
        if self.payload_limit < self.chunk_size + _FRAME_HEADROOM:
            raise ConfigError(f"max payload {self.payload_limit} B does not hold a {self.chunk_size} B chunk's frame")
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"cluster name must be letters, digits, '-', '_', got {self.name!r}")

    @property
    def payload_limit(self) -> int:
        if self.max_payload is not None:
            return self.max_payload
        return max(DEFAULT_MAX_PACKET_SIZE, self.chunk_size + _FRAME_HEADROOM)

    def addresses(self) -> list[NodeAddress]:
        hosts = list(self.hosts) or ["127.0.0.1"]
        if len(hosts) == 1:
            hosts *= self.nodes
        shared = len(set(hosts)) < len(hosts)  # nodes share a host: each takes its own ports
        return [
            NodeAddress(
                name=f"n{index + 1}",
                host=host,
                client_port=self.client_port + (index if shared else 0),
                cluster_port=self.cluster_port + (index if shared else 0),
                mqtt_port=self.mqtt_port + (index if shared else 0),
                monitor_port=self.monitor_port + (index if shared else 0),
            )
            for index, host in enumerate(hosts)
        ]

    def broker_list(self) -> str:
        """What ``--broker`` takes for this cluster: every node, in order."""
        return ",".join(node.mqtt_url for node in self.addresses())


def render_node_config(spec: ClusterSpec, index: int, store_dir: str | None = None) -> str:
    """The nats-server config of node ``index``: client, cluster, MQTT and monitoring listeners, JetStream."""
    nodes = spec.addresses()
    node = nodes[index]
    routes = ", ".join(f"nats-route://{other.host}:{other.cluster_port}" for other in nodes if other != node)
    replicas = min(3, spec.nodes)
    store = store_dir or f"{spec.store_dir}/{node.name}"
    # Nodes on hosts of their own listen on every interface; nodes sharing a host each on that host only.
    bind = node.host if len({n.host for n in nodes}) < len(nodes) else "0.0.0.0"
    return f"""# genfl-server cluster-config: node {node.name} of {spec.nodes} in NATS cluster {spec.name!r}.
server_name: {node.name}
listen: {bind}:{node.client_port}
http: {node.host}:{node.monitor_port}
# The largest message: a blob chunk ({spec.chunk_size} B) or a model update, in a signed frame.
max_payload: {spec.payload_limit}

jetstream {{
  store_dir: {json.dumps(store)}
  max_memory_store: 256MB
  max_file_store: 8GB
}}

cluster {{
  name: {spec.name}
  listen: {bind}:{node.cluster_port}
  routes: [{routes}]
}}

# MQTT 3.1.1 for the fleet. Sessions, QoS 1 messages and retained device states live in JetStream,
# replicated to {replicas} nodes: a client whose node dies finds its session on another one.
mqtt {{
  listen: {bind}:{node.mqtt_port}
  stream_replicas: {replicas}
  consumer_replicas: {replicas}
  ack_wait: "30s"
  max_ack_pending: 1024
}}
"""


def render_unit_template(executable: str = "/usr/sbin/nats-server", config_dir: str = "/etc/genfl-nats") -> str:
    """``genfl-nats@.service``: ``systemctl enable --now genfl-nats@n1`` runs node n1 from ``n1.conf``."""
    return f"""[Unit]
Description=genfl fleet broker: NATS node %i (MQTT, JetStream)
Documentation=https://docs.nats.io/running-a-nats-service/configuration/mqtt
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={executable} -c {config_dir}/%i.conf
ExecReload=/bin/kill -HUP $MAINPID
# Lame-duck mode: clients are moved off over a few seconds, not dropped all at once.
KillSignal=SIGUSR2
TimeoutStopSec=60
Restart=on-failure
RestartSec=2
LimitNOFILE=65536
DynamicUser=yes
StateDirectory=genfl-nats
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
MemoryDenyWriteExecute=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class ClusterFiles:
    directory: Path
    configs: tuple[Path, ...]
    unit: Path
    brokers: str


def write_cluster_config(spec: ClusterSpec, out: Path, *, store_root: Path | None = None) -> ClusterFiles:
    """One ``nN.conf`` per node, ``genfl-nats@.service`` and ``brokers.txt`` (the ``--broker`` list) in ``out``.

    ``store_root`` puts each node's JetStream store under a folder of this machine (tests, a trial on one
    host); without it the configs name ``spec.store_dir``, the unit's state directory.
    """
    out.mkdir(parents=True, exist_ok=True)
    configs = []
    for index, node in enumerate(spec.addresses()):
        store = str(store_root / node.name) if store_root is not None else None
        path = out / f"{node.name}.conf"
        atomic_write(path, render_node_config(spec, index, store).encode())
        configs.append(path)
    unit = out / "genfl-nats@.service"
    atomic_write(unit, render_unit_template().encode())
    atomic_write(out / "brokers.txt", (spec.broker_list() + "\n").encode())
    return ClusterFiles(out, tuple(configs), unit, spec.broker_list())


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

    def __init__(self, spec: ClusterSpec, folder: Path, executable: str | None = None) -> None:
        found = executable or shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")
        if found is None:
            raise TransportError("nats-server is not installed (Debian: apt install nats-server)")
        self.spec = spec
        self.folder = folder
        self.executable = found
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

    def mqtt_clients(self) -> dict[str, list[str]]:
        """The MQTT client ids connected to each node that is up (from its monitoring ``/connz``)."""
        clients: dict[str, list[str]] = {}
        for node in self.nodes:
            url = f"http://{node.host}:{node.monitor_port}/connz?limit=100000"
            try:
                with urllib.request.urlopen(url, timeout=2.0) as reply:
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

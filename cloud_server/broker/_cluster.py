"""A clustered broker: NATS with JetStream and MQTT on every node.

One Mosquitto is one process on one host. NATS servers cluster: each node
speaks MQTT 3.1.1 (QoS 1, retained messages, persistent sessions), and keeps
sessions and retained messages in JetStream streams replicated to every node,
so a client whose node dies reconnects to another one and finds its session
there. :func:`write_cluster_config` writes one config per node (and a systemd
template unit); ``testing.LocalCluster`` runs such configs as processes on this
machine, for tests and benchmarks.

NATS maps MQTT topics to its subjects: a topic must not hold ``.`` or a space
(NATS 2.9 refuses them), so on NATS fleet and device names use letters,
digits, ``-`` and ``_`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from protocol import DEFAULT_CHUNK_SIZE, ConfigError, atomic_write, setting

from ..rounds._limits import DEFAULT_MAX_PACKET_SIZE

__all__ = [
    "ClusterSpec",
    "NodeAddress",
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


def host_list(text: str) -> tuple[str, ...]:
    return tuple(host.strip() for host in text.split(",") if host.strip())


@dataclass(frozen=True)
class ClusterSpec:
    """What ``genfl-server cluster-config`` writes. Nodes on one host get consecutive ports."""

    nodes: int = setting(3, "Nodes in the cluster (3 survives losing one).")
    hosts: tuple[str, ...] = setting(
        (), "Comma-separated host of each node, or one for all (default: all on 127.0.0.1).", parse=host_list
    )
    client_port: int = setting(4222, "NATS client port.")
    cluster_port: int = setting(6222, "Port of the routes between the nodes.")
    mqtt_port: int = setting(1883, "MQTT port (nodes sharing a host count up from it).")
    monitor_port: int = setting(8222, "HTTP monitoring port (/healthz, /varz).")
    chunk_size: int = setting(DEFAULT_CHUNK_SIZE, "The fleet's blob chunk size (serve --chunk-size), bytes.")
    max_payload: int | None = setting(None, "Largest message, bytes (default: 4 MiB, or a chunk's frame if larger).")
    store_dir: str = setting("/var/lib/genfl-nats", "JetStream store root on each node.")
    name: str = setting("genfl", "Cluster name.")

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
# The fleet speaks MQTT; the NATS client port and the monitoring port (which lists every client) are for this
# machine only.
listen: 127.0.0.1:{node.client_port}
http: 127.0.0.1:{node.monitor_port}
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

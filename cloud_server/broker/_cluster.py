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

A *secured* cluster (``cluster-config --state-dir``, written by
:func:`cloud_server.fleet._security.write_cluster_setup`) adds TLS from the
fleet CA on every listener (routes verify the other node's certificate, so no
node joins without one the CA signed) and includes ``accounts.conf``, the
fleet's logins and what each may do (:mod:`._cluster_users`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
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

    def broker_list(self, *, tls: bool = False) -> str:
        """What ``--broker`` takes for this cluster: every node, in order."""
        urls = (node.mqtt_url for node in self.addresses())
        return ",".join(url.replace("mqtt://", "mqtts://", 1) if tls else url for url in urls)


@dataclass(frozen=True)
class NodeSecurity:
    """What makes one node of a secured cluster: its certificate and key, the fleet CA, the accounts file."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    accounts_file: Path  # in the folder of the node's config
    pid_file: Path | None  # where the server finds a node of this machine to reload it

    def tls_block(self, indent: str, *, verify: bool = False) -> str:
        lines = [f"cert_file: {json.dumps(str(self.cert_file))}", f"key_file: {json.dumps(str(self.key_file))}",
                 f"ca_file: {json.dumps(str(self.ca_file))}", "timeout: 5"]  # fmt: skip
        if verify:
            lines.append("verify: true")
        return f"{indent}tls {{\n" + "".join(f"{indent}  {line}\n" for line in lines) + f"{indent}}}\n"


def render_node_config(
    spec: ClusterSpec, index: int, store_dir: str | None = None, security: NodeSecurity | None = None
) -> str:
    """The nats-server config of node ``index``: client, cluster, MQTT and monitoring listeners, JetStream; with
    ``security``, TLS on every listener and the fleet's accounts."""
    nodes = spec.addresses()
    node = nodes[index]
    routes = ", ".join(f"nats-route://{other.host}:{other.cluster_port}" for other in nodes if other != node)
    replicas = min(3, spec.nodes)
    store = store_dir or f"{spec.store_dir}/{node.name}"
    # Nodes on hosts of their own listen on every interface; nodes sharing a host each on that host only.
    bind = node.host if len({n.host for n in nodes}) < len(nodes) else "0.0.0.0"
    if security is None:
        secured = cluster_tls = mqtt_tls = ""
        kind = "an OPEN cluster: anyone who reaches its MQTT port reads and writes every topic"
    else:
        kind = "secured: TLS from the fleet CA, the fleet's logins in accounts.conf"
        secured = (
            (f"pid_file: {json.dumps(str(security.pid_file))}\n" if security.pid_file else "")
            + "# Every login and what it may publish and subscribe to (rewritten by genfl-server at enrollments);\n"
            "# beside this file (NATS reads an include relative to the config that names it).\n"
            f"include {json.dumps(security.accounts_file.name)}\n" + security.tls_block("")
        )
        # A route is mutual TLS: a node that cannot show a certificate from the fleet CA does not join.
        cluster_tls = security.tls_block("  ", verify=True)
        mqtt_tls = security.tls_block("  ")
    return f"""# genfl-server cluster-config: node {node.name} of {spec.nodes} in NATS cluster {spec.name!r}; {kind}.
server_name: {node.name}
# The fleet speaks MQTT; the NATS client port and the monitoring port (which lists every client) are for this
# machine only.
listen: 127.0.0.1:{node.client_port}
http: 127.0.0.1:{node.monitor_port}
# The largest message: a blob chunk ({spec.chunk_size} B) or a model update, in a signed frame.
max_payload: {spec.payload_limit}
{secured}
jetstream {{
  store_dir: {json.dumps(store)}
  max_memory_store: 256MB
  max_file_store: 8GB
}}

cluster {{
  name: {spec.name}
  listen: {bind}:{node.cluster_port}
  routes: [{routes}]
{cluster_tls}}}

# MQTT 3.1.1 for the fleet. Sessions, QoS 1 messages and retained device states live in JetStream,
# replicated to {replicas} nodes: a client whose node dies finds its session on another one.
mqtt {{
  listen: {bind}:{node.mqtt_port}
  stream_replicas: {replicas}
  consumer_replicas: {replicas}
  ack_wait: "30s"
  max_ack_pending: 1024
{mqtt_tls}}}
"""


def render_unit_template(
    executable: str = "/usr/sbin/nats-server", config_dir: str = "/etc/genfl-nats", user: str | None = None
) -> str:
    """``genfl-nats@.service``: ``systemctl enable --now genfl-nats@n1`` runs node n1 from ``n1.conf``. ``user``:
    the account that owns a secured cluster's keys and accounts file (else a dynamic user)."""
    identity = f"User={user}\nGroup={user}" if user else "DynamicUser=yes"
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
{identity}
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


def write_cluster_config(
    spec: ClusterSpec,
    out: Path,
    *,
    store_root: Path | None = None,
    security: Callable[[NodeAddress], NodeSecurity] | None = None,
    user: str | None = None,
) -> ClusterFiles:
    """One ``nN.conf`` per node, ``genfl-nats@.service`` and ``brokers.txt`` (the ``--broker`` list) in ``out``.

    ``store_root`` puts each node's JetStream store under a folder of this machine (tests, a trial on one
    host); without it the configs name ``spec.store_dir``, the unit's state directory. ``security`` gives each
    node's TLS files and the accounts file (a secured cluster: ``mqtts://`` nodes), ``user`` the unit's user.
    """
    out.mkdir(parents=True, exist_ok=True)
    configs = []
    for index, node in enumerate(spec.addresses()):
        store = str(store_root / node.name) if store_root is not None else None
        path = out / f"{node.name}.conf"
        node_security = security(node) if security is not None else None
        atomic_write(path, render_node_config(spec, index, store, node_security).encode())
        configs.append(path)
    unit = out / "genfl-nats@.service"
    # A secured node's config names its files by absolute path: it is read from where it was written.
    config_dir = str(out.resolve()) if security is not None else "/etc/genfl-nats"
    atomic_write(unit, render_unit_template(config_dir=config_dir, user=user).encode())
    brokers = spec.broker_list(tls=security is not None)
    atomic_write(out / "brokers.txt", (brokers + "\n").encode())
    return ClusterFiles(out, tuple(configs), unit, brokers)

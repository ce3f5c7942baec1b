"""A secured fleet on a real three-node NATS cluster, written by `genfl-server cluster-config --state-dir`.

TLS from the fleet CA on every listener (routes mutual), a login per device confined to its own topics, and the
server in an account of its own, so that no login's client id can take over its session.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_server.broker._broker_files import SERVER_USER
from cloud_server.fleet._pki import issue_server_certificate, new_ca
from cloud_server.fleet._security import FleetSecurity
from cloud_server.rounds._journal_reader import JournalReader
from protocol import BrokerAddress, BrokerRefused, MqttTransport, TransportError, generate_signing_key, public_key_text
from testing import LocalCluster, free_loopback_spec
from tests.system._helpers import ENV, Processes, processes, skip_unless_ci, wait_for
from tests.system._secured import collect, pump

pytestmark = pytest.mark.nats


class SecuredCluster:
    def __init__(self, root: Path, fleet: str, cluster: LocalCluster, group: Processes) -> None:
        self.root, self.fleet, self.cluster, self.group = root, fleet, cluster, group
        self.state = root / "state"
        self.ca = cluster.folder / "ca.crt"
        self.nodes = cluster.brokers.split(",")

    def security(self) -> FleetSecurity:
        security = FleetSecurity.load(self.state)
        assert security is not None
        return security

    def add_device(self, name: str) -> str:
        """Enroll ``name`` in the registry and reload the nodes (what an enrollment does); its password."""
        security = self.security()
        try:
            password = security.enroll_directly(name, public_key_text(generate_signing_key()))
            assert security.sync_broker() == ""
        finally:
            security.close()
        return password

    def server_password(self) -> str:
        return (self.state / "security" / "server.password").read_text().strip()

    def client(self, client_id: str, username: str | None, password: str | None, node: int = 0,
               url: str | None = None) -> MqttTransport:  # fmt: skip
        address = BrokerAddress.parse(url or self.nodes[node])
        transport = MqttTransport(address, client_id, username=username, password=password,
                                  ca_file=self.ca if address.tls else None)  # fmt: skip
        transport.connect(timeout_s=15)
        return transport

    def connect_eventually(self, client_id: str, username: str, password: str, node: int = 0) -> MqttTransport:
        """A login just added: every node has re-read the accounts within a moment (and NATS 2.9 refuses a login
        that arrives during a reload)."""
        return wait_for(lambda: _try(lambda: self.client(client_id, username, password, node)), 20,
                        f"{username} to be let in on node {node + 1}")  # fmt: skip

    def cli(self, module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV,
                              timeout=120)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"{module} {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done


def _try(connect):  # type: ignore[no-untyped-def]
    try:
        return connect()
    except (BrokerRefused, TransportError):
        return None


@pytest.fixture(scope="module")
def secured_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    if shutil.which("nats-server") is None and shutil.which("nats-server", path="/usr/sbin") is None:
        skip_unless_ci("no nats-server on PATH (Debian: apt install nats-server)")
    root = tmp_path_factory.mktemp("secured-cluster")
    fleet = f"test-{root.name[-6:].replace('.', '')}{int(time.time() * 1000) % 100000}"
    with processes(root) as group:
        cluster = LocalCluster(free_loopback_spec(3), root / "nats", state_dir=root / "state", fleet=fleet)
        with cluster:
            yield SecuredCluster(root, fleet, cluster, group)


# paho 2.x leaves the socket of a connection the broker closed before its CONNACK to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_node_refuses_anonymous_wrong_password_and_plain_clients(secured_cluster: SecuredCluster) -> None:
    # Prepare
    password = secured_cluster.add_device("gate")
    plain = [url.replace("mqtts://", "mqtt://") for url in secured_cluster.nodes]
    # Execute + Assert
    for node in range(3):
        with pytest.raises(BrokerRefused):
            secured_cluster.client("anonymous", None, None, node)
        with pytest.raises(BrokerRefused):
            secured_cluster.client("guesser", "gate", "not-its-password", node)
        with pytest.raises(BrokerRefused):
            secured_cluster.client("server-guesser", SERVER_USER, password, node)
        with pytest.raises(TransportError):
            secured_cluster.client("plain", "gate", password, url=plain[node])
        secured_cluster.connect_eventually(f"gate-{node}", "gate", password, node).close()  # the control


def test_a_device_reads_and_writes_only_its_own_topics_across_nodes(secured_cluster: SecuredCluster) -> None:
    # Prepare: the server's login on node 1, board a on node 2, board b on node 3
    root = f"genfl/{secured_cluster.fleet}"
    password_a, password_b = secured_cluster.add_device("a"), secured_cluster.add_device("b")
    server = secured_cluster.connect_eventually("observer", SERVER_USER, secured_cluster.server_password(), 0)
    a = secured_cluster.connect_eventually("a-attacker", "a", password_a, 1)
    b = secured_cluster.connect_eventually("b-honest", "b", password_b, 2)
    seen = {name: collect(t) for name, t in (("server", server), ("a", a), ("b", b))}
    server.subscribe(f"{root}/devices/+/update")
    server.subscribe(f"{root}/devices/+/state")
    b.subscribe(f"{root}/devices/b/task")
    for topic_filter in (f"{root}/devices/b/task", f"{root}/devices/+/task", f"{root}/#", "#"):
        a.subscribe(topic_filter)
    pump(1.0, server, a, b)
    # Execute
    server.publish(f"{root}/devices/b/task", b"for b only")
    a.publish(f"{root}/devices/b/update", b"a forging b")
    a.publish(f"{root}/devices/b/state", b"a forging b's state")
    a.publish(f"{root}/devices/a/update", b"a on its own topic")  # the control: this one arrives
    wait_for(lambda: pump(0.1, server, a, b) or (b"a on its own topic" in [p for _, p in seen["server"]]
                                                  and b"for b only" in [p for _, p in seen["b"]]),
             20, "the control messages to cross the cluster")  # fmt: skip
    pump(1.0, server, a, b)
    # Assert
    assert seen["a"] == []
    assert [p for _, p in seen["server"]] == [b"a on its own topic"]
    for transport in (server, a, b):
        transport.close()


def test_a_login_claiming_the_servers_client_id_neither_kicks_it_nor_gets_its_queued_messages(
    secured_cluster: SecuredCluster,
) -> None:
    # Prepare: the server's persistent session on node 1 subscribed to updates, then away with one queued for it
    root = f"genfl/{secured_cluster.fleet}"
    password_c, password_d = secured_cluster.add_device("c"), secured_cluster.add_device("d")
    server = secured_cluster.connect_eventually(SERVER_USER, SERVER_USER, secured_cluster.server_password(), 0)
    server.subscribe(f"{root}/devices/+/update")
    wait_for(lambda: server.subscriptions_settled, 30, "the server's subscription")
    server.close()
    c = secured_cluster.connect_eventually("c-board", "c", password_c, 1)
    c.publish(f"{root}/devices/c/update", b"queued for the server")
    pump(1.0, c)
    # Execute: board d's login takes the server's client id, on every node in turn, while the server is away
    thief_got: list[list[tuple[str, bytes]]] = []
    for node in range(3):
        thief = secured_cluster.connect_eventually(SERVER_USER, "d", password_d, node)
        thief_got.append(collect(thief))
        thief.subscribe(f"{root}/devices/+/update")
        wait_for(lambda t=thief: pump(0.1, t) or t.subscriptions_settled, 30, "the broker's answer")
        pump(0.5, thief)
        thief.close()
    back = secured_cluster.connect_eventually(SERVER_USER, SERVER_USER, secured_cluster.server_password(), 0)
    got = collect(back)
    wait_for(lambda: pump(0.1, back) or got, 20, "the server's queued update")
    # Execute: and again while the server is connected
    thief = secured_cluster.connect_eventually(SERVER_USER, "d", password_d, 0)
    c.publish(f"{root}/devices/c/update", b"while the thief is connected")
    wait_for(lambda: pump(0.1, back, thief, c) or len(got) == 2, 20, "the second update")
    pump(1.5, back, thief)
    # Assert
    assert [p for _, p in got] == [b"queued for the server", b"while the thief is connected"]
    assert thief_got == [[], [], []]
    assert back.taken_over == 0 and back.connected
    for transport in (back, thief, c):
        transport.close()


def _routes(monitor_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/routez", timeout=2) as reply:
        return int(json.load(reply)["num_routes"])


def test_a_node_without_a_certificate_from_the_fleet_ca_cannot_join(
    secured_cluster: SecuredCluster, tmp_path: Path
) -> None:
    # Prepare: a rogue node with a certificate of its own CA, routed to every node of the fleet's cluster
    cluster = secured_cluster.cluster
    rogue_ca = new_ca("rogue")
    rogue = issue_server_certificate(rogue_ca, "127.0.0.1", client_auth=True)
    (tmp_path / "ca.crt").write_bytes(rogue_ca.certificate_pem())
    (tmp_path / "rogue.crt").write_bytes(rogue.certificate_pem())
    (tmp_path / "rogue.key").write_bytes(rogue.key_pem())
    port, monitor = cluster.nodes[0].cluster_port + 10, cluster.nodes[0].monitor_port + 10
    routes = ", ".join(f"nats-route://127.0.0.1:{node.cluster_port}" for node in cluster.nodes)
    (tmp_path / "rogue.conf").write_text(f"""server_name: rogue
listen: 127.0.0.1:-1
http: 127.0.0.1:{monitor}
cluster {{
  name: {cluster.spec.name}
  listen: 127.0.0.1:{port}
  routes: [{routes}]
  tls {{ cert_file: "{tmp_path / "rogue.crt"}", key_file: "{tmp_path / "rogue.key"}",
         ca_file: "{tmp_path / "ca.crt"}", verify: true, timeout: 2 }}
}}
""")
    before = [_routes(node.monitor_port) for node in cluster.nodes]
    log = open(tmp_path / "rogue.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([cluster.executable, "-c", str(tmp_path / "rogue.conf")], stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    try:
        # Execute: the rogue tries every route a few times
        wait_for(lambda: (tmp_path / "rogue.log").read_text(errors="replace").count("TLS") >= 3, 30,
                 "the rogue node's route attempts")  # fmt: skip
        time.sleep(2.0)
        # Assert
        assert [_routes(node.monitor_port) for node in cluster.nodes] == before == [2, 2, 2]
        assert _routes(monitor) == 0
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _image_folder(folder: Path, classes: range, parity: int) -> None:
    """Digits as PNG files in one folder per class, as a board holds its data (here only ``classes``)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        if label in classes and index % 2 == parity:
            path = folder / str(label) / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).save(path)


def test_serve_enroll_run_and_revoke_on_the_cluster(secured_cluster: SecuredCluster) -> None:
    # Prepare: the real server on the cluster, two boards enrolled by the real `genfl-edge enroll` on other nodes,
    # each with image folders of some classes only (0-5 and 4-9)
    state, group = str(secured_cluster.state), secured_cluster.group
    group.start("server", "-m", "cloud_server", "serve", "--state-dir", state, "--rounds", "1", "--min-devices", "2",
                "--local-epochs", "1", "--round-timeout", "300")  # fmt: skip
    wait_for(lambda: "serving fleet" in group.log("server"), 60, "the server to connect")
    homes = {}
    for index, (name, classes) in enumerate((("board-x", range(0, 6)), ("board-y", range(4, 10)))):
        _image_folder(secured_cluster.root / f"data-{name}", classes, index)
        token = secured_cluster.cli("cloud_server", "devices", "add", name, "--state-dir", state).stdout.strip()
        (secured_cluster.root / f"token-{name}").write_text(token + "\n")
        homes[name] = secured_cluster.root / f"home-{name}"
        nodes = ",".join(secured_cluster.nodes[index + 1 :] + secured_cluster.nodes[: index + 1])
        secured_cluster.cli("edge_agent", "enroll", "--server", nodes, "--token-file",
                            str(secured_cluster.root / f"token-{name}"), "--ca", str(secured_cluster.ca),
                            "--home", str(homes[name]), "--data",
                            f"folder:{secured_cluster.root / f'data-{name}'}")  # fmt: skip
    # Execute: a signed round
    for name, home in homes.items():
        group.start(name, "-m", "edge_agent", "run", "--home", str(home))
    journal = JournalReader(secured_cluster.state)
    wait_for(lambda: (r := journal.round(1)) is not None and r.closed is not None, 240, "round 1 to close")
    # Assert
    assert journal.round(1).accepted == 2  # type: ignore[union-attr]
    # Execute: revoke board-y; the nodes re-read their accounts and drop its login
    secured_cluster.cli("cloud_server", "devices", "revoke", "board-y", "--state-dir", state)
    agent_id = f"genfl-{secured_cluster.fleet}-board-y"
    wait_for(lambda: not any(agent_id in ids for ids in secured_cluster.cluster.mqtt_clients().values()), 30,
             "the revoked board to be disconnected")  # fmt: skip
    time.sleep(3.0)  # its agent keeps retrying
    # Assert: it stays out; the other board's login still works (it is connected, or back within its backoff)
    assert not any(agent_id in ids for ids in secured_cluster.cluster.mqtt_clients().values())
    other = f"genfl-{secured_cluster.fleet}-board-x"
    wait_for(lambda: any(other in ids for ids in secured_cluster.cluster.mqtt_clients().values()), 30,
             "the other board to be connected")  # fmt: skip
    clients = secured_cluster.cluster.mqtt_clients()
    assert len(clients) == 3 and not any(agent_id in ids for ids in clients.values()), clients
    # every node lived through the reload (a node holding the revoked board's retained state once panicked)
    cluster = secured_cluster.cluster
    assert all(process.poll() is None for process in cluster.processes.values()), [
        cluster.log_tail(name, 3) for name in cluster.processes
    ]
    group.stop_all()

"""cluster-config: the NATS configs it writes, checked by nats-server itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_server.broker._cluster import ClusterSpec, write_cluster_config
from protocol import ConfigError, parse_brokers

BIN = Path(sys.executable).parent


def _nats_server() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if found is None:
        from tests.system._helpers import skip_unless_ci

        skip_unless_ci("no nats-server on PATH (Debian: apt install nats-server)")
    return found


def test_nodes_sharing_a_host_get_their_own_ports_and_the_broker_list_names_them_all() -> None:
    spec = ClusterSpec(nodes=3, mqtt_port=1883, client_port=4222, cluster_port=6222, monitor_port=8222)
    nodes = spec.addresses()
    assert [n.mqtt_port for n in nodes] == [1883, 1884, 1885]
    assert [n.cluster_port for n in nodes] == [6222, 6223, 6224]
    assert [a.port for a in parse_brokers(spec.broker_list())] == [1883, 1884, 1885]
    assert all(not a.v5 for a in parse_brokers(spec.broker_list()))  # NATS speaks MQTT 3.1.1
    spread = ClusterSpec(nodes=3, hosts=("a", "b", "c"))
    assert [(n.host, n.mqtt_port) for n in spread.addresses()] == [("a", 1883), ("b", 1883), ("c", 1883)]


def test_the_payload_limit_fits_the_chunk_and_bad_specs_are_refused() -> None:
    assert ClusterSpec(chunk_size=256 * 1024).payload_limit == 4 * 1024 * 1024
    assert ClusterSpec(chunk_size=8 * 1024 * 1024).payload_limit == 8 * 1024 * 1024 + 64 * 1024
    for kwargs, message in (
        ({"nodes": 0}, "1..32 nodes"),
        ({"nodes": 3, "hosts": ("a", "b")}, "one host for every node"),
        ({"chunk_size": 10}, "chunk size"),
        ({"max_payload": 1024}, "does not hold"),
        ({"max_payload": 128 * 1024 * 1024}, "over NATS's limit"),
        ({"mqtt_port": 70000}, "out of range"),
        ({"name": "a b"}, "cluster name"),
    ):
        with pytest.raises(ConfigError, match=message):
            ClusterSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.nats
def test_every_written_node_config_is_valid_for_nats_server(tmp_path: Path) -> None:
    nats = _nats_server()
    files = write_cluster_config(ClusterSpec(nodes=3, hosts=("10.0.0.1", "10.0.0.2", "10.0.0.3")), tmp_path)
    assert [p.name for p in files.configs] == ["n1.conf", "n2.conf", "n3.conf"]
    for path in files.configs:
        checked = subprocess.run([nats, "-t", "-c", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        text = path.read_text()
        assert "stream_replicas: 3" in text and "max_payload: 4194304" in text
    n2 = files.configs[1].read_text()
    assert "nats-route://10.0.0.1:6222" in n2 and "nats-route://10.0.0.3:6222" in n2
    assert "nats-route://10.0.0.2" not in n2  # no route to itself
    assert "ExecStart=/usr/sbin/nats-server -c /etc/genfl-nats/%i.conf" in files.unit.read_text()
    # the fleet's listeners on every interface; the client port and the monitoring port on loopback only
    assert "listen: 127.0.0.1:4222" in n2 and "http: 127.0.0.1:8222" in n2
    assert "listen: 0.0.0.0:6222" in n2 and "listen: 0.0.0.0:1883" in n2


def test_cluster_config_command_writes_the_files_and_explains_bad_input(tmp_path: Path) -> None:
    done = subprocess.run([BIN / "genfl-server", "cluster-config", "--nodes", "3", "--out", str(tmp_path / "c")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "brokers.txt",
        "genfl-nats@.service",
        "n1.conf",
        "n2.conf",
        "n3.conf",
    ]
    assert (tmp_path / "c" / "brokers.txt").read_text().strip() in done.stdout
    bad = subprocess.run([BIN / "genfl-server", "cluster-config", "--nodes", "3", "--hosts", "a,b", "--out",
                          str(tmp_path / "d")], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0
    assert "one host for every node" in bad.stderr
    assert "Traceback" not in bad.stderr

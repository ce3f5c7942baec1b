"""cluster-config: the NATS configs it writes, checked by nats-server itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cloud_server.broker._cluster import ClusterSpec, write_cluster_config
from cloud_server.fleet._security import FleetSecurity, write_cluster_setup
from protocol import ConfigError, EnrollmentToken, generate_signing_key, parse_brokers, public_key_text

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
    unsaid = subprocess.run([BIN / "genfl-server", "cluster-config", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True)  # fmt: skip
    assert unsaid.returncode != 0 and "--state-dir" in unsaid.stderr and "--open" in unsaid.stderr
    assert not (tmp_path / "x").exists()  # nothing open is written unless asked for
    done = subprocess.run([BIN / "genfl-server", "cluster-config", "--nodes", "3", "--open", "--out",
                           str(tmp_path / "c")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "brokers.txt",
        "genfl-nats@.service",
        "n1.conf",
        "n2.conf",
        "n3.conf",
    ]
    assert (tmp_path / "c" / "brokers.txt").read_text().strip() in done.stdout
    assert "OPEN cluster" in done.stdout
    bad = subprocess.run([BIN / "genfl-server", "cluster-config", "--nodes", "3", "--hosts", "a,b", "--open", "--out",
                          str(tmp_path / "d")], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0
    assert "one host for every node" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.nats
def test_a_secured_cluster_has_tls_everywhere_mutual_routes_and_the_fleets_logins(tmp_path: Path) -> None:
    # Prepare: a fleet with one enrolled board and one pending token
    nats = _nats_server()
    spec = ClusterSpec(nodes=3, hosts=("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    files = write_cluster_setup(tmp_path / "state", spec, tmp_path / "c", fleet="plant-3")
    security = FleetSecurity.load(tmp_path / "state")
    assert security is not None
    security.enroll_directly("cam-1", public_key_text(generate_signing_key()))
    token, _note = security.new_token("cam-2", 600)
    security.write_broker_files()
    login = EnrollmentToken.parse(token).enroll_user
    security.close()
    # Assert: nats-server takes every node config; TLS on the MQTT, client and route listeners, routes verified
    assert files.brokers.split(",")[0] == "mqtts://10.0.0.1:1883?version=3.1.1"
    for path in files.configs:
        checked = subprocess.run([nats, "-t", "-c", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    n1 = files.configs[0].read_text()
    assert n1.count("tls {") == 3 and n1.count("verify: true") == 1
    assert n1.split("cluster {")[1].split("}")[0].count("verify: true") == 1  # the routes' block
    assert 'include "accounts.conf"' in n1 and "listen: 127.0.0.1:4222" in n1
    certificate = x509.load_pem_x509_certificate((tmp_path / "c" / "n2.crt").read_bytes())
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage and ExtendedKeyUsageOID.SERVER_AUTH in usage
    alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    assert (tmp_path / "c" / "n2.key").stat().st_mode & 0o077 == 0
    # Assert: the server alone in its account; the board only inside its own topics; the token only its own
    accounts = (tmp_path / "c" / "accounts.conf").read_text()
    server_part, devices_part = accounts.split("DEVICES: {")
    assert '"user": "genfl-server"' in server_part and '"user": "genfl-server"' not in devices_part
    users = {line.split('"user": "')[1].split('"')[0]: line for line in devices_part.splitlines() if '"user"' in line}
    assert set(users) == {"cam-1", login}
    own = "genfl.plant-3.devices.cam-1"
    cam = json.loads(users["cam-1"])
    assert cam["password"].startswith("$2b$")
    assert cam["permissions"]["publish"]["allow"] == [f"{own}.state", f"{own}.update", f"{own}.blob.req"]
    assert cam["permissions"]["subscribe"]["allow"] == [
        f"{own}.state",
        f"{own}.task",
        f"{own}.ack",
        f"{own}.blob.chunk",
        "$MQTT.sub.>",
    ]
    enroll = json.loads(users[login])["permissions"]
    assert enroll["publish"]["allow"] == [f"genfl.plant-3.enroll.{login}.request"]
    assert enroll["subscribe"]["allow"] == [f"genfl.plant-3.enroll.{login}.reply", "$MQTT.sub.>"]
    assert "$JS" not in accounts  # no login may use the JetStream API
    # every channel crosses only in its direction: what boards send into SERVER, what it sends out of it
    server_imports = server_part.split("imports:")[1]
    assert "devices.*.update" in server_imports and "devices.*.task" not in server_imports
    assert '"$MQTT.msgs.genfl.plant-3.devices.*.update"' in server_imports  # the QoS 1 copy
    assert "devices.*.task" in server_part.split("exports:")[1].split("imports:")[0]


def test_a_revoked_board_keeps_a_locked_user_on_the_cluster_so_that_no_node_panics_on_reload(tmp_path: Path) -> None:
    import bcrypt

    # Prepare: a secured cluster's fleet with one enrolled board
    write_cluster_setup(tmp_path / "state", ClusterSpec(), tmp_path / "c", fleet="plant-4")
    security = FleetSecurity.load(tmp_path / "state")
    assert security is not None
    password = security.enroll_directly("cam-1", public_key_text(generate_signing_key()))
    security.write_broker_files()

    def user_line() -> dict[str, object]:
        accounts = (tmp_path / "c" / "accounts.conf").read_text().split("DEVICES: {")[1]
        return json.loads(next(line for line in accounts.splitlines() if '"user": "cam-1"' in line))

    before = user_line()
    # Execute
    security.registry.revoke("cam-1")
    security.write_broker_files()
    after = user_line()
    security.close()
    # Assert: the same user and permissions (its retained state stays a known user's: nats-server 2.9 panics on
    # reload over a retained message whose user is gone), under a password nobody knows
    assert after["permissions"] == before["permissions"]
    assert bcrypt.checkpw(password.encode(), str(before["password"]).encode())
    assert not bcrypt.checkpw(password.encode(), str(after["password"]).encode())


def test_a_fleet_name_nats_cannot_carry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no '\.' in its name"):
        write_cluster_setup(tmp_path / "state", ClusterSpec(), tmp_path / "c", fleet="plant.3")
    assert not (tmp_path / "state").exists() and not (tmp_path / "c").exists()

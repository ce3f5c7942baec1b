import pytest

from protocol import ConfigError, InMemoryBus, ProtocolError, Topics, topic_matches, validate_name


def test_topic_layout_confines_each_device_to_its_subtree() -> None:
    topics = Topics("fleet-a")
    assert topics.device("dev-1", "update") == "genfl/fleet-a/devices/dev-1/update"
    assert topic_matches(topics.all_devices("update"), "genfl/fleet-a/devices/dev-9/update")
    assert not topic_matches(topics.all_devices("update"), "genfl/fleet-b/devices/dev-9/update")
    parsed = topics.parse("genfl/fleet-a/devices/dev-1/blob/req")
    assert (parsed.device_id, parsed.channel) == ("dev-1", "blob/req")


@pytest.mark.parametrize("topic", ["genfl/other/devices/d/update", "genfl/fleet-a/devices/d/nope", "x"])
def test_unknown_topics_are_rejected(topic: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Topics("fleet-a").parse(topic)
    assert info.value.reason == "unknown-topic"


def test_names_with_wildcards_are_refused() -> None:
    with pytest.raises(ConfigError):
        Topics("a/+")


def test_in_memory_bus_delivers_in_order_and_counts_bytes() -> None:
    bus = InMemoryBus()
    sender, receiver = bus.connect(), bus.connect()
    got: list[tuple[str, bytes]] = []
    receiver.set_handler(lambda t, p: got.append((t, p)))
    receiver.subscribe("a/+/c")
    sender.publish("a/1/c", b"one")
    sender.publish("a/2/d", b"ignored")
    sender.publish("a/3/c", b"three", retain=True)
    assert bus.drain() == 3
    late = bus.connect()
    late_got: list[str] = []
    late.set_handler(lambda t, p: late_got.append(t))
    late.subscribe("a/#")
    bus.drain()
    assert got == [("a/1/c", b"one"), ("a/3/c", b"three")]
    assert late_got == ["a/3/c"]  # retained
    assert sender.bytes_sent == 3 + 7 + 5
    assert receiver.bytes_received == 8


def test_names_match_in_full_so_that_no_newline_reaches_the_password_file_or_acl() -> None:
    for bad in ("board\n", "board\nuser genfl-server", "\nboard"):
        with pytest.raises(ConfigError):
            validate_name("device id", bad)
    with pytest.raises(ProtocolError):
        Topics("f").parse("genfl/f/devices/board\n/state")


def test_a_broker_list_parses_in_order_and_refuses_mixed_or_repeated_nodes() -> None:
    from protocol import BrokerAddress, parse_brokers, rotated

    nodes = parse_brokers(" mqtt://a:1883?version=3.1.1, mqtt://b:1884?version=3.1.1 ,mqtt://c?version=3.1.1")
    assert nodes == (BrokerAddress("a", 1883, v5=False), BrokerAddress("b", 1884, v5=False),
                     BrokerAddress("c", 1883, v5=False))  # fmt: skip
    assert parse_brokers("mqtt://solo:1883") == (BrokerAddress("solo", 1883),)
    assert rotated("mqtt://a:1,mqtt://b:2,mqtt://c:3", 4) == "mqtt://b:2,mqtt://c:3,mqtt://a:1"
    for bad, message in (
        ("", "at least one URL"),
        (" , ", "no URL"),
        ("mqtt://a:1,mqtt://a:1", "listed twice"),
        ("mqtt://a:1,mqtts://b:2", "mix"),
        ("mqtt://a:1,mqtt://b:2?version=3.1.1", "mix"),
        ("mqtt://a:1,http://b:2", "mqtt://HOST:PORT"),
        (",".join(f"mqtt://h{i}:1" for i in range(65)), "at most 64"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_brokers(bad)


def test_a_transport_refuses_nodes_of_mixed_kinds() -> None:
    from protocol import BrokerAddress, MqttTransport

    with pytest.raises(ConfigError, match="mix"):
        MqttTransport([BrokerAddress("a", 1), BrokerAddress("b", 2, tls=True)], "c")
    with pytest.raises(ConfigError, match="no broker"):
        MqttTransport([], "c")


def test_the_in_memory_transport_has_the_whole_seam() -> None:
    bus = InMemoryBus()
    server, device = bus.connect(), bus.connect()
    got: list[tuple[str, bytes]] = []
    device.set_handler(lambda topic, payload: got.append((topic, payload)))
    device.subscribe("genfl/x/#")
    with server:
        server.publish("genfl/x/a", b"1")
        server.flush()
        assert got == []  # nothing is delivered before a poll (or a drain)
        assert device.poll() == 1 and got == [("genfl/x/a", b"1")]
    assert not server.connected

"""The MQTT transport against the machine's real Mosquitto."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_server import Coordinator, CoordinatorConfig, FedAvg, StrategyConfig
from cloud_server.broker._broker import free_port
from protocol import (
    BlobChunk,
    BrokerAddress,
    ConfigError,
    DeviceState,
    MqttTransport,
    Topics,
    TransportError,
    Update,
    encode_message,
    encode_tensors,
    iter_chunks,
    parse_brokers,
)
from simulation import SimulationConfig, run_simulation
from tests.system._helpers import wait_for


def _model_hash(result) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(encode_tensors(result.final_state)).hexdigest()


def test_agent_processes_over_mqtt_give_the_in_memory_model_bit_for_bit(mosquitto_url: str, fleet: str) -> None:
    # Prepare
    base = {"dataset": "digits", "devices": 6, "alpha": 0.5, "rounds": 3, "seed": 0}
    # Execute
    local = run_simulation(SimulationConfig(**base))
    mqtt = run_simulation(SimulationConfig(**base, transport="mqtt", broker=mosquitto_url, fleet=fleet))
    # the same fleet, three agents to a process, all training through the one torch-preloaded pool
    grouped = run_simulation(SimulationConfig(**base, transport="mqtt", broker=mosquitto_url, fleet=f"{fleet}-k",
                                              agents_per_process=3, worker_slots=2))  # fmt: skip
    # Assert
    assert _model_hash(mqtt) == _model_hash(local) == _model_hash(grouped)
    assert [r.accuracy for r in mqtt.rounds] == [r.accuracy for r in local.rounds]
    # The same traffic, but for when each board's state after its ack lands: in memory every one comes after the
    # round closed, over MQTT most before (a state is about 200 bytes, an update about 99 KB)
    state_bytes = base["devices"] * 256
    assert all(abs(m.bytes_up - r.bytes_up) <= state_bytes for m, r in zip(mqtt.rounds, local.rounds)), (
        [r.bytes_up for r in mqtt.rounds],
        [r.bytes_up for r in local.rounds],
    )


def test_the_first_connection_is_retried_with_a_growing_wait_until_it_works_or_attempts_run_out(
    mosquitto_url: str,
) -> None:
    import threading

    # Prepare: one transport to a port nobody listens on, one to the broker
    heard: list[tuple[float, bool]] = []
    nowhere = MqttTransport(BrokerAddress("127.0.0.1", free_port()), "nobody", backoff_cap_s=30)
    there = MqttTransport(parse_brokers(mosquitto_url), f"genfl-patient-{time.monotonic_ns()}", session_expiry_s=0)

    # Execute
    def waiting(why: str, seconds: float, refused: bool) -> None:
        heard.append((seconds, refused))

    gave_up = nowhere.connect_patiently(threading.Event(), timeout_s=2, attempts=3, waiting=waiting)
    with there:  # the seam's context manager: connects, and closes on leaving
        joined = there.connect_patiently(threading.Event(), attempts=1) and there.connected
    # Assert: three tries, each wait within its doubling band (jitter 0.5-1x of 1, 2, 4 s), none a refusal
    assert gave_up is False and len(heard) == 3 and not any(refused for _, refused in heard)
    for (seconds, _), bound in zip(heard, (1.0, 2.0, 4.0)):
        assert bound / 2 <= seconds <= bound
    assert joined and not there.connected


def test_unreachable_broker_is_a_clear_transport_error() -> None:
    transport = MqttTransport(BrokerAddress("127.0.0.1", free_port()), "nobody")
    with pytest.raises(TransportError, match="cannot reach the broker"):
        transport.connect(timeout_s=2)
    with pytest.raises(ConfigError, match="mqtt://HOST:PORT"):
        BrokerAddress.parse("http://example")


def test_coordinator_rejects_and_counts_hostile_messages_and_keeps_serving(mosquitto_url: str, fleet: str) -> None:
    # Prepare: a coordinator over MQTT with one registered device, round 1 open
    topics = Topics(fleet)
    state = {"w": np.zeros(4, dtype=np.float32)}
    transport = MqttTransport(BrokerAddress.parse(mosquitto_url), f"{fleet}-coordinator", session_expiry_s=0)
    transport.connect()
    coordinator = Coordinator(
        CoordinatorConfig(fleet=fleet, model_name="toy", rounds=1, min_devices=1),
        FedAvg(StrategyConfig()),
        transport,
        state,
    )
    coordinator.start()
    attacker = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{fleet}-attacker", protocol=paho.MQTTv5)
    attacker.connect("127.0.0.1", BrokerAddress.parse(mosquitto_url).port)
    attacker.loop_start()
    try:

        def send(topic: str, payload: bytes, retain: bool = False) -> None:
            attacker.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

        def pump_until(done: Callable[[], bool], what: str) -> None:  # progress, not a fixed wall time
            def polled() -> bool:
                transport.poll(0.05)
                return done()

            wait_for(polled, 60, what, interval_s=0)

        hello = DeviceState(device_id="dev-a", state="online", num_samples=3)
        # retained, as a board's state is: the coordinator's subscription may not be in place yet
        send(topics.device("dev-a", "state"), encode_message(hello), retain=True)
        pump_until(lambda: coordinator.round_number == 1, "round 1 to open")
        chunk = next(iter_chunks(b"x" * 5000, 1024))
        bad_chunk = BlobChunk(chunk.blob_id, chunk.index, chunk.count, chunk.total_size, "0" * 64, chunk.data)
        closed_round = Update(
            round=7, device_id="dev-a", base_model_id=coordinator.global_id, num_samples=3,
            train_loss=0.1, train_accuracy=0.5, delta={"w": np.ones(4, dtype=np.float32)},
        )  # fmt: skip
        # Execute: garbage, a truncated update, a closed round, the wrong channel, an unknown topic
        send(topics.device("dev-a", "update"), b"\x00garbage\xff" * 10)
        send(topics.device("dev-a", "update"), encode_message(closed_round)[:-9])
        send(topics.device("dev-a", "update"), encode_message(closed_round))
        send(topics.device("dev-a", "blob/req"), encode_message(bad_chunk))
        send(f"genfl/{fleet}/devices/dev-a/firmware", b"?")
        pump_until(lambda: sum(coordinator.rejected.values()) >= 5, "the five hostile messages counted")
        # Assert: each rejected and counted, the round still open and served
        assert coordinator.rejected["bad-frame"] == 1
        assert coordinator.rejected["bad-tensors"] == 1
        assert coordinator.rejected["closed-round"] == 1
        assert coordinator.rejected["unexpected-type"] == 1
        assert coordinator.rejected["unknown-topic"] == 1
        good = Update(
            round=1, device_id="dev-a", base_model_id=coordinator.global_id, num_samples=3,
            train_loss=0.1, train_accuracy=0.5, delta={"w": np.ones(4, dtype=np.float32)},
        )  # fmt: skip
        send(topics.device("dev-a", "update"), encode_message(good))
        pump_until(lambda: coordinator.finished, "the round to close")
        assert coordinator.finished
        np.testing.assert_array_equal(coordinator.global_state["w"], np.ones(4, dtype=np.float32))
    finally:
        send(topics.device("dev-a", "state"), b"", retain=True)
        attacker.disconnect()
        attacker.loop_stop()
        transport.close()


def test_the_inbox_is_bounded_and_what_overflows_is_dropped_and_counted(mosquitto_url: str, fleet: str) -> None:
    # Prepare: a receiver that holds at most 10 messages (or 10 KiB) until it polls
    address = BrokerAddress.parse(mosquitto_url)
    receiver = MqttTransport(address, f"{fleet}-receiver", session_expiry_s=0, inbox_messages=10, inbox_bytes=10240)
    got: list[bytes] = []
    receiver.set_handler(lambda topic, payload: got.append(payload))
    receiver.connect()
    receiver.subscribe(f"genfl/{fleet}/flood")
    sender = MqttTransport(address, f"{fleet}-sender", session_expiry_s=0)
    sender.connect()
    time.sleep(0.3)
    # Execute: 50 small messages and one of 20 KiB, none polled yet
    for index in range(50):
        sender.publish(f"genfl/{fleet}/flood", b"%d" % index)
    sender.publish(f"genfl/{fleet}/flood", b"x" * 20480)
    sender.flush()
    deadline = time.monotonic() + 10
    while receiver.dropped < 41 and time.monotonic() < deadline:
        time.sleep(0.05)
    while receiver.poll(0.2):
        pass
    # Assert: the first ten were kept, everything else dropped; after polling, there is room again
    assert got == [b"%d" % i for i in range(10)] and receiver.dropped == 41
    sender.publish(f"genfl/{fleet}/flood", b"later")
    sender.flush()
    receiver.poll(2.0)
    assert got[-1] == b"later"
    sender.close()
    receiver.close()


def test_a_refused_subscription_is_asked_for_again_and_used_once_granted(
    mosquitto_url: str, fleet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a subscription the broker refuses once, as a cluster does one it could not set up during a reload
    import protocol._mqtt as mqtt_module

    monkeypatch.setattr(mqtt_module, "RESUBSCRIBE_FIRST_S", 0.5)
    topic = f"genfl/{fleet}/refused-once"
    listener = MqttTransport(BrokerAddress.parse(mosquitto_url), f"{fleet}-listener", session_expiry_s=0)
    listener.connect()
    got: list[bytes] = []
    listener.set_handler(lambda _topic, payload: got.append(payload))
    listener._subscription_refused(topic, "Unspecified error")  # what the SUBACK's failure code leads to
    sender = MqttTransport(BrokerAddress.parse(mosquitto_url), f"{fleet}-sender", session_expiry_s=0)
    sender.connect()

    # Execute: the listener keeps polling; the sender publishes until something arrives
    def delivered() -> bool:
        sender.publish(topic, b"hello")
        listener.poll(0.2)
        return bool(got)

    wait_for(delivered, 20, "the subscription to be asked for again")
    # Assert
    assert listener.refused_filters == {} and listener.subscriptions_settled
    for transport in (listener, sender):
        transport.close()

"""Soak benchmark: many agents for many rounds over the real Mosquitto, under a stream of hostile messages.

The coordinator runs as its own `genfl-server serve` process (so its memory is
its own); the agents are simulated in this process, each an AgentCore with its
own MQTT connection, training in-process on a shard of digits (cnn-digits, one
torch thread). Meanwhile a separate MQTT client publishes malformed and hostile
messages into the fleet's topics. Runs a small fleet and a large one and
compares the coordinator's peak memory. Writes ``OUT/soak.json``.

    python tools/bench_soak.py --broker mqtt://127.0.0.1:1883 --agents 20 200 --rounds 30 --out bench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

import paho.mqtt.client as paho
import torch
from paho.mqtt.enums import CallbackAPIVersion

from cloud_server.rounds._journal_reader import JournalReader
from edge_agent import AgentCore, InProcessRunner
from protocol import BlobStore, BrokerAddress, DeviceState, MqttTransport, Topics, Will, encode_message
from simulation import SimulationConfig, device_shards
from tools._bench_common import machine, write_json


def _hostile(url: str, fleet: str, devices: list[str], stop: threading.Event, sent: list[int]) -> None:
    """Publish garbage, truncated frames, forged updates and stray topics until told to stop."""
    address = BrokerAddress.parse(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{fleet}-hostile", protocol=paho.MQTTv5)
    client.connect(address.host, address.port)
    client.loop_start()
    rng = random.Random(0)
    forged = encode_message(DeviceState(device_id="intruder", state="online", num_samples=10**9))
    while not stop.is_set():
        device = rng.choice(devices)
        kind = rng.randrange(5)
        if kind == 0:
            topic, payload = f"genfl/{fleet}/devices/{device}/update", rng.randbytes(rng.randrange(1, 2048))
        elif kind == 1:
            topic, payload = f"genfl/{fleet}/devices/{device}/update", b"GFL\x02\x00\x00\x10\x00{" + rng.randbytes(64)
        elif kind == 2:
            topic, payload = f"genfl/{fleet}/devices/{device}/blob/req", b'GFL\x02\x00\x00\x00\x0f{"type":"ack"}'
        elif kind == 3:
            topic, payload = f"genfl/{fleet}/devices/{device}/state", forged  # state for another device id
        else:
            topic, payload = f"genfl/{fleet}/devices/{device}/firmware", b"?"
        client.publish(topic, payload, qos=1)
        sent[0] += 1
        stop.wait(0.05)
    client.disconnect()
    client.loop_stop()


def broker_counters(url: str, wait_s: float = 3.0) -> dict[str, int]:
    """Mosquitto's own message counters ($SYS, retained, updated every sys_interval)."""
    address = BrokerAddress.parse(url)
    values: dict[str, int] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sys-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)

    def on_message(client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(ValueError):
            values[message.topic.removeprefix("$SYS/broker/")] = int(message.payload)

    client.on_message = on_message
    client.connect(address.host, address.port)
    counters = ["messages/received", "messages/sent", "publish/messages/received", "publish/messages/sent"]
    client.subscribe([(f"$SYS/broker/{name}", 0) for name in counters])
    client.loop_start()
    time.sleep(wait_s)
    client.disconnect()
    client.loop_stop()
    return values


def _hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def soak(url: str, agents: int, rounds: int, hostile: bool) -> dict[str, object]:
    fleet = f"soak-{uuid.uuid4().hex[:8]}"
    config = SimulationConfig(devices=agents, partition="shards", classes_per_device=2, min_samples=2, seed=0)
    prepared = device_shards(config)
    topics = Topics(fleet)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="genfl-soak-") as tmp:
        state = Path(tmp) / "server"
        server = subprocess.Popen(
            [sys.executable, "-m", "cloud_server", "serve", "--state-dir", str(state), "--fleet", fleet,
             "--broker", url, "--rounds", str(rounds), "--min-devices", str(agents), "--round-timeout", "300",
             "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "server.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        cores: list[AgentCore] = []
        transports: list[MqttTransport] = []
        for device_id, shard in prepared.shards:
            offline = encode_message(DeviceState(device_id=device_id, state="offline", num_samples=len(shard)))
            transport = MqttTransport(
                BrokerAddress.parse(url), f"genfl-{fleet}-{device_id}",
                will=Will(topics.device(device_id, "state"), offline), session_expiry_s=0,
            )  # fmt: skip
            transport.connect()
            transports.append(transport)
            runner = InProcessRunner(device_id, shard, prepared.dataset.classes)
            cores.append(AgentCore(device_id, topics, transport, BlobStore(), runner, num_samples=len(shard)))
        stop = threading.Event()
        sent = [0]
        attacker = threading.Thread(target=_hostile, args=(url, fleet, [c.device_id for c in cores], stop, sent))
        counters_before = broker_counters(url)
        started = time.perf_counter()
        for core in cores:
            core.start()
        if hostile:
            attacker.start()
        peak = 0.0
        while server.poll() is None:
            moved = sum(t.poll(0.0) for t in transports)
            peak = max(peak, _hwm_mb(server.pid) or 0.0)
            if not moved:
                time.sleep(0.005)
            if time.perf_counter() - started > rounds * 300:
                server.kill()
        seconds = time.perf_counter() - started
        time.sleep(11)  # mosquitto refreshes $SYS every 10 s by default
        counters_after = broker_counters(url)
        stop.set()
        if hostile:
            attacker.join()
        for core, transport in zip(cores, transports):
            transport.publish(topics.device(core.device_id, "state"), b"", retain=True)
            transport.close()
        journal = JournalReader(state)
        closed = len(journal.closed_rounds())
        per_round = [r.accepted for r in journal.rounds()]
        updates = journal.updates()
        accepted = len(updates)
        strangers = sum(1 for u in updates if not u.device_id.startswith("device-"))
        rejected = journal.rejected()
        return {
            "agents": agents,
            "rounds_asked": rounds,
            "rounds_completed": closed,
            "server_exit_code": server.returncode,
            "updates_accepted": accepted,
            "updates_per_round_min": min(per_round) if per_round else 0,
            "accepted_from_unknown_devices": strangers,
            "hostile_messages_sent": sent[0],
            "rejected_by_reason": rejected,
            "coordinator_peak_rss_mb": round(peak, 1),
            # Whole-broker counters ($SYS, refreshed every 10 s): include any other traffic of that broker.
            "broker_counts_during_run": {k: counters_after[k] - counters_before.get(k, 0) for k in counters_after},
            "seconds": round(seconds, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--agents", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    runs = []
    for agents in args.agents:
        result = soak(args.broker, agents, args.rounds, hostile=True)
        print(json.dumps(result), flush=True)
        runs.append(result)
    ratio = runs[-1]["coordinator_peak_rss_mb"] / runs[0]["coordinator_peak_rss_mb"] if len(runs) > 1 else None  # type: ignore[operator]
    write_json(args.out / "soak.json", {"machine": machine(), "runs": runs, "peak_memory_ratio": ratio})
    os._exit(0)  # paho threads of 200 clients: do not wait for their interpreter teardown


if __name__ == "__main__":
    main()

"""A secure-aggregation round over MQTT in which 30% of the agents go silent right after their masked input.

``genfl-server simulate --transport mqtt --secure-aggregation`` runs on the machine's Mosquitto while a watcher
reads the fleet's update topic. In round 2, as soon as every agent of a process has sent its masked update, that
process is frozen (SIGSTOP: its connection stays open and its agents never answer again, as a board that hangs
or whose link dies without a word), until 30% of the agents are; the survivors' answers must unmask the sum
of all of them. When round 3's tasks go out the frozen processes are killed (their connections drop, so the
round leaves them out at once). Used by ``tools/bench_privacy.py --part dropout``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from protocol import GenflError, MaskedUpdate, Task, decode_message

DROP_ROUND = 2


def _agent_processes(root: int) -> dict[int, set[str]]:
    """The simulated agents' processes under ``root``: pid -> the device ids it runs."""
    from tools.bench_sim import _descendants

    found: dict[int, set[str]] = {}
    for pid in _descendants(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv]
        if "--spec" in words:  # python -m simulation.multi --spec AGENTS.json
            spec = json.loads(Path(words[words.index("--spec") + 1]).read_text())
            found[pid] = {agent["device_id"] for agent in spec["agents"]}
        elif "--config" in words and "edge_agent" in words:  # python -m edge_agent run --config DIR/edge.toml
            found[pid] = {Path(words[words.index("--config") + 1]).parent.name}
    return found


class _Dropper:
    """Freezes agent processes once all their agents sent round 2's masked input, up to ``share`` of them."""

    def __init__(self, root: int, devices: int, share: float) -> None:
        self.root, self.wanted = root, round(devices * share)
        self.masked: set[str] = set()
        self.frozen: dict[int, set[str]] = {}
        self.killed = False
        self._lock = threading.Lock()

    def on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            frame = decode_message(message.payload)
        except GenflError:
            return
        with self._lock:
            if isinstance(frame, MaskedUpdate) and frame.round == DROP_ROUND:
                self.masked.add(frame.device_id)
                self._freeze_complete()
            elif isinstance(frame, Task) and frame.round > DROP_ROUND and not self.killed:
                self.killed = True
                for pid in self.frozen:
                    os.kill(pid, signal.SIGKILL)

    def _freeze_complete(self) -> None:
        if sum(len(ids) for ids in self.frozen.values()) >= self.wanted:
            return
        for pid, ids in _agent_processes(self.root).items():
            if pid not in self.frozen and ids <= self.masked:
                os.kill(pid, signal.SIGSTOP)
                self.frozen[pid] = ids
                return

    @property
    def dropped(self) -> list[str]:
        return sorted(device for ids in self.frozen.values() for device in ids)


def dropout_run(out: Path, args: list[str], devices: int, share: float = 0.3) -> dict[str, Any]:
    """One ``simulate`` run (``args``) with ``share`` of the agents going silent after round 2's masked input."""
    command = [sys.executable, "-m", "cloud_server", "simulate", *args, "--out", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dropper = _Dropper(process.pid, devices, share)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-dropper-{os.getpid()}")
    client.on_message = dropper.on_message
    client.connect("127.0.0.1", 1883)
    client.subscribe([("genfl/+/devices/+/update", 0), ("genfl/+/devices/+/task", 0)])
    client.loop_start()
    try:
        output, _ = process.communicate()
    finally:
        client.loop_stop()
        client.disconnect()
        for pid in dropper.frozen:  # (a run that failed before round 3)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    return {
        "wall_s": round(time.perf_counter() - started, 2), "dropped_after_input": len(dropper.dropped),
        "seconds_per_round": [round(r["seconds"], 2) for r in rounds], "accepted": [r["devices"] for r in rounds],
        # per device in the round's sum (a frozen device's answers are missing from round 2's bytes)
        "device_bytes_up_per_round": [round(r["bytes_up"] / max(r["devices"], 1)) for r in rounds],
        "device_bytes_down_per_round": [round(r["bytes_down"] / max(r["devices"], 1)) for r in rounds],
    }  # fmt: skip

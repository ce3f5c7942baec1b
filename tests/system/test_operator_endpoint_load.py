"""The operator endpoint under a crowd, on a real server: a thousand idle connections and a slowloris while
rounds run. The coordinator closes every round and its file descriptors come back to where they were."""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
import urllib.request
from pathlib import Path

from cloud_server.broker._broker import free_port
from cloud_server.rounds._journal_reader import JournalReader
from simulation import SimulationConfig
from tests.system._helpers import artifacts_dir, processes, wait_for
from tests.system.test_serve_resume import _write_shards

IDLE = 1000


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def _slowloris(port: int, stop: threading.Event, cut: list[float]) -> None:
    """A client that sends one header line a second and never ends its request; when cut off, it starts again."""
    while not stop.is_set():
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as slow:
            try:
                slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                while not stop.wait(1.0):
                    slow.sendall(b"X-Slow: 1\r\n")
            except OSError:
                cut.append(time.monotonic() - started)


def test_idle_connections_and_a_slowloris_leave_the_rounds_and_the_descriptors_alone(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: a server with metrics and the dashboard; room for a thousand sockets in this process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * IDLE)), hard))
    specs = _write_shards(SimulationConfig(devices=2, rounds=4, seed=0), tmp_path)
    state = tmp_path / "server"
    journal = JournalReader(state)
    port = free_port()
    stop, cut = threading.Event(), []
    with processes(tmp_path) as group:
        server = group.server("server", state, fleet, "--rounds", "50", "--min-devices", "2", "--broker", mosquitto_url,
                              "--metrics-port", str(port), "--dashboard")  # fmt: skip
        wait_for(lambda: _answers(port), 90, "the metrics endpoint")
        baseline = _fds(server.pid)
        # Execute: the crowd arrives, then the boards
        idle = []
        for _ in range(IDLE):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break  # the listen backlog is full: the rest could not even connect
        slow = threading.Thread(target=_slowloris, args=(port, stop, cut), daemon=True)
        slow.start()
        seen: list[int] = []

        def sample() -> None:  # the server's descriptors while the crowd is there
            while not stop.wait(0.2):
                seen.append(_fds(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for device_id, spec in specs.items():
            group.agent(device_id, device_id, fleet, mosquitto_url, spec)
        wait_for(lambda: len(journal.closed_rounds()) >= 4, 300, "4 rounds", progress=lambda: len(journal.rounds()))
        # the idle crowd cut off, the slowloris served and cut at the deadline too
        wait_for(lambda: any(c >= 8 for c in cut), 60, "the slowloris cut at its deadline", progress=lambda: len(cut))
        during = _answers(port)
        stop.set()
        slow.join(timeout=10)
        sampler.join(timeout=10)
        peak = max(seen)
        held = 0
        for connection in idle:  # which the server still held open (it closes each at its deadline)
            connection.settimeout(0.5)
            try:
                held += connection.recv(1) != b""
            except TimeoutError:
                held += 1
            except OSError:
                pass
            connection.close()
        wait_for(lambda: _fds(server.pid) <= baseline, 30, "the server's descriptors back to their baseline",
                 progress=lambda: _fds(server.pid))  # fmt: skip
        after = _fds(server.pid)
    # Assert: every round closed, the slowloris was cut at the deadline each time, the endpoint still answered
    figures = {"idle_connections_opened": len(idle), "held_at_the_end": held, "fd_baseline": baseline,
               "fd_peak": peak, "fd_after": after, "rounds_closed": len(journal.closed_rounds()),
               "slowloris_cut_after_s": [round(c, 1) for c in cut]}  # fmt: skip
    (artifacts_dir() / "operator-endpoint-load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(figures)
    assert figures["rounds_closed"] >= 4
    assert all(c < 15 for c in cut), figures  # refused at once while the slots were taken, else cut at 10 s
    assert peak <= baseline + 40, figures  # a bounded number of connections held, not a thousand
    assert held <= 16 and after <= baseline, figures  # at most the endpoint's connection cap, each within its deadline
    assert during, "the endpoint answered with the slowloris still at it"

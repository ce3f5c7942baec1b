"""What the operator sees of a running fleet: Prometheus metrics checked against the journal, and the
dashboard loaded in headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_server.broker._broker import free_port
from cloud_server.rounds._journal_reader import JournalReader
from simulation import SimulationConfig
from tests.system._helpers import artifacts_dir, clear_retained, mqtt_client, processes, skip_unless_ci, wait_for
from tests.system.test_serve_resume import _write_shards


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        skip_unless_ci("no chromium on PATH (Debian: apt install chromium)")
    return found


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1000,900"]  # fmt: skip
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.chromium
def test_metrics_match_the_journal_and_the_dashboard_shows_the_fleet(tmp_path: Path, mosquitto_url: str,
                                                                     fleet: str) -> None:  # fmt: skip
    # Prepare: a server with metrics, dashboard and a test set; two agents; one hostile message
    chromium = _chromium()
    specs = _write_shards(SimulationConfig(devices=2, rounds=3, seed=0), tmp_path)
    state = tmp_path / "server"
    journal = JournalReader(state)
    port = free_port()
    with processes(tmp_path) as group:
        try:
            group.server("server", state, fleet, "--rounds", "50", "--min-devices", "2", "--broker", mosquitto_url,
                         "--metrics-port", str(port), "--dashboard", "--eval-dataset", "digits")  # fmt: skip
            agents = [group.agent(d, d, fleet, mosquitto_url, specs[d]) for d in specs]
            wait_for(lambda: len(journal.closed_rounds()) >= 1, 90, "round 1")
            with mqtt_client(mosquitto_url, f"{fleet}-outsider") as outsider:
                topic = f"genfl/{fleet}/devices/device-000/update"
                outsider.publish(topic, b"\x00 not a frame", qos=1).wait_for_publish(5)
            wait_for(lambda: journal.rejected(), 30, "the hostile message counted")
            wait_for(lambda: len(journal.closed_rounds()) >= 3, 120, "3 rounds")
            for agent in agents:  # freeze the fleet: the journal and the metrics stop moving
                os.kill(agent.pid, signal.SIGSTOP)
            settled: list[int] = []

            def still() -> bool:  # the journal did not change across two scrapes half a second apart
                snapshot = (len(journal.rounds()), len(journal.updates()))
                settled.append(hash(snapshot))
                return len(settled) >= 3 and settled[-1] == settled[-2] == settled[-3]

            wait_for(still, 30, "the journal to settle", interval_s=0.7)
            # Execute: a scrape the journal did not move across (an update in flight may still land)
            for _ in range(20):
                counted = (len(journal.closed_rounds()), len(journal.updates()))
                metrics = _scrape(port)
                if counted == (len(journal.closed_rounds()), len(journal.updates())):
                    break
                time.sleep(0.5)
            page = _headless(chromium, tmp_path / "chromium", "--dump-dom", f"http://127.0.0.1:{port}/")
            artifacts = artifacts_dir()
            shot = artifacts / "dashboard.png"
            _headless(chromium, tmp_path / "chromium", f"--screenshot={shot}", f"http://127.0.0.1:{port}/")
            for agent in agents:
                os.kill(agent.pid, signal.SIGCONT)
        finally:
            clear_retained(mosquitto_url, fleet, list(specs))
    # Assert: the counters are the journal's
    closed, updates = counted
    assert metrics[("genfl_rounds_total", ())] == closed >= 3
    assert metrics[("genfl_updates_accepted_total", ())] == updates
    for reason, count in journal.rejected().items():
        assert metrics[("genfl_messages_rejected_total", (("reason", reason),))] == count
    assert metrics[("genfl_round", ())] == journal.rounds()[-1].round
    assert metrics[("genfl_devices_online", ())] == 2
    assert metrics[("genfl_round_duration_seconds_count", ())] == closed
    assert metrics[("genfl_bytes_total", (("direction", "up"),))] > 0
    assert metrics[("genfl_bytes_total", (("direction", "down"),))] > 0
    last_accuracy = journal.closed_rounds()[-1].accuracy
    assert last_accuracy is not None and metrics[("genfl_accuracy", ())] == last_accuracy > 0.1
    assert metrics[("genfl_broker_node", (("node", mosquitto_url),))] == 1
    # the page, as Chromium rendered it: both devices online, the rounds, one point per round on the curve
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    for device_id in specs:
        assert f'<tr data-device="{device_id}"><td>{device_id}</td><td class="online">online</td>' in dom
    assert "2 of 2 devices online" in dom
    assert f"{closed} rounds closed" in dom
    assert dom.count("<circle") == closed
    assert f"accuracy {last_accuracy:.3f}" in dom
    assert shot.exists() and shot.stat().st_size > 10_000

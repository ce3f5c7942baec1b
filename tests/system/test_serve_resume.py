"""genfl-server serve with real agents over the machine's Mosquitto: resume after SIGKILL, stragglers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

from cloud_server.rounds._journal_reader import JournalReader
from edge_agent import DeviceDataset, save_npz
from protocol import encode_tensors
from simulation import SimulationConfig, device_shards, run_simulation
from tests.system._helpers import clear_retained, processes, wait_for


def _write_shards(config: SimulationConfig, folder: Path) -> dict[str, str]:
    prepared = device_shards(config)
    specs = {}
    for device_id, shard in prepared.shards:
        path = folder / f"{device_id}.npz"
        save_npz(DeviceDataset(device_id, prepared.dataset.classes, shard, shard.subset(shard.labels[:0])), path)
        specs[device_id] = f"npz:{path}"
    return specs


def test_server_killed_mid_round_resumes_and_counts_each_update_once(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: three devices with the shards an in-memory simulation of the same config would use
    # int8 updates: the workers' error-feedback residual (a file between rounds) must match in-memory too
    config = SimulationConfig(
        devices=3, rounds=2, seed=0, codec="int8", local_epochs=1
    )  # serve's, as the helper runs it
    specs = _write_shards(config, tmp_path)
    state = tmp_path / "server"
    journal = JournalReader(state)
    serve_args = ("--model", "cnn-digits", "--rounds", "2", "--min-devices", "3", "--broker", mosquitto_url,
                  "--codec", "int8")  # fmt: skip
    with processes(tmp_path) as group:
        try:
            group.server("server-1", state, fleet, *serve_args)
            for device_id in ("device-000", "device-001"):
                group.agent(device_id, device_id, fleet, mosquitto_url, specs[device_id])
            wait_for(lambda: len(journal.devices()) == 2, 60, "two devices registered")
            slow = group.agent("device-002", "device-002", fleet, mosquitto_url, specs["device-002"])
            wait_for(lambda: journal.round(1), 60, "round 1 opened")
            os.kill(slow.pid, signal.SIGSTOP)  # it has its task but cannot answer yet
            wait_for(lambda: len(journal.updates(1)) == 2, 60, "two updates accepted")
            # Execute: kill the coordinator mid-round, restart it, let the third device answer
            group.running["server-1"].kill()
            group.running["server-1"].wait()
            server = group.server("server-2", state, fleet, *serve_args)
            os.kill(slow.pid, signal.SIGCONT)
            code = server.wait(timeout=120)
        finally:
            clear_retained(mosquitto_url, fleet, list(specs))
        # Assert: the run finished, each device counted once per round
        assert code == 0, group.log("server-2")[-3000:]
    assert "resumed round 1: 2 of 3 updates already accepted" in group.log("server-2")
    rows = [(u.round, u.device_id, u.num_samples) for u in journal.updates()]
    assert [(r, d) for r, d, _ in rows] == [(r, d) for r in (1, 2) for d in ("device-000", "device-001", "device-002")]
    totals = [(r.round, r.accepted, r.total_weight, int(r.closed is not None)) for r in journal.rounds()]
    samples = sum(n for r, _, n in rows if r == 1)
    assert totals == [(1, 3, samples, 1), (2, 3, samples, 1)]
    # ... and the final model is bit-identical to an uninterrupted in-memory run of the same federation
    meta = {"model": "cnn-digits", "classes": json.dumps([str(d) for d in range(10)])}  # the file names the classes
    expected = hashlib.sha256(encode_tensors(run_simulation(config).final_state, meta)).hexdigest()
    final = (state / "checkpoints" / "round-0002.safetensors").read_bytes()
    assert hashlib.sha256(final).hexdigest() == expected


def test_straggler_is_left_out_after_the_timeout_and_joins_a_later_round(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    specs = _write_shards(SimulationConfig(devices=2, rounds=2, seed=1), tmp_path)
    state = tmp_path / "server"
    journal = JournalReader(state)
    with processes(tmp_path) as group:
        try:
            # Prepare: the straggler registers and stops before any round can open (two devices are needed)
            server = group.server(
                "server", state, fleet, "--rounds", "2", "--min-devices", "2", "--round-timeout", "20",
                "--local-epochs", "1", "--broker", mosquitto_url,  # one epoch: the woken straggler's round fits
            )  # fmt: skip
            straggler = group.agent("straggler", "device-001", fleet, mosquitto_url, specs["device-001"])
            wait_for(lambda: len(journal.devices()) == 1, 60, "the straggler registered")
            os.kill(straggler.pid, signal.SIGSTOP)
            group.agent("fast", "device-000", fleet, mosquitto_url, specs["device-000"])
            # Execute: round 1 picks both and closes at its deadline without the straggler, which then wakes
            wait_for(lambda: any(r.timed_out and r.accepted == 1 for r in journal.rounds()), 60, "a timed-out round")
            os.kill(straggler.pid, signal.SIGCONT)
            code = server.wait(timeout=120)
        finally:
            clear_retained(mosquitto_url, fleet, list(specs))
        assert code == 0, group.log("server")[-3000:]
    # Assert: the straggler was left out of a round, then came back and was counted in a later one
    left_out = [r.round for r in journal.rounds() if r.timed_out and "device-001" in r.picked]
    assert left_out
    joined = [u.round for u in journal.updates() if u.device_id == "device-001" and u.round > left_out[0]]
    assert joined, group.log("straggler")[-2000:]


def test_a_second_serve_on_the_same_state_exits_with_one_line_and_the_first_goes_on(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: a server waiting for devices
    state = tmp_path / "server"
    serve_args = ("--model", "cnn-digits", "--rounds", "1", "--min-devices", "2", "--broker", mosquitto_url)
    with processes(tmp_path) as group:
        first = group.server("server-1", state, fleet, *serve_args)
        wait_for(lambda: "serving fleet" in group.log("server-1"), 60, "the first server to serve")
        # Execute: a second serve on the same state folder
        second = group.server("server-2", state, fleet, *serve_args)
        code = second.wait(timeout=60)
        # Assert: refused at once, before touching the broker; the first one still serves
        lines = [line for line in group.log("server-2").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert code == 2, group.log("server-2")[-2000:]
        assert errors == [lines[-1]] and f"is in use by another genfl-server serve (pid {first.pid}" in errors[0]
        assert "Traceback" not in group.log("server-2")
        assert first.poll() is None
        assert "lost the broker" not in group.log("server-1")


def test_rounds_every_board_fails_are_reported_by_reason_and_serve_stops_opening_them(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: two boards whose images do not fit the fleet's model
    import numpy as np

    from edge_agent import LabeledArrays

    arrays = LabeledArrays(np.zeros((20, 3, 32, 32), dtype=np.uint8), np.arange(20) % 10)
    save_npz(DeviceDataset("cam", tuple("0123456789"), arrays, arrays), tmp_path / "cam.npz")
    state = tmp_path / "server"
    devices = ["cam-1", "cam-2"]
    with processes(tmp_path) as group:
        try:
            server = group.server("server", state, fleet, "--model", "cnn-digits", "--rounds", "10", "--min-devices",
                                  "2", "--broker", mosquitto_url, "--max-failed-rounds", "2")  # fmt: skip
            for device_id in devices:
                group.agent(device_id, device_id, fleet, mosquitto_url, f"npz:{tmp_path / 'cam.npz'}")
            # Execute
            code = server.wait(timeout=120)
        finally:
            clear_retained(mosquitto_url, fleet, devices)
    # Assert: two rounds, each failed by both boards for the same reason; then a one-line stop, not round 3
    log = group.log("server")
    assert code == 1, log[-3000:]
    assert log.count("2 board(s) failed: 2 x ") == 2 and "takes 1x8x8" in log
    assert "2 rounds in a row failed on every board" in log.splitlines()[-1]
    assert [r.round for r in JournalReader(state).rounds()] == [1, 2]
    assert len(JournalReader(state).failures()) == 4


def test_a_client_taking_the_servers_session_is_named_and_not_fought_over(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: a server waiting for devices
    import time

    from protocol import BrokerAddress, MqttTransport

    state = tmp_path / "server"
    with processes(tmp_path) as group:
        group.server("server", state, fleet, "--model", "cnn-digits", "--rounds", "1", "--min-devices", "2",
                     "--broker", mosquitto_url)  # fmt: skip
        wait_for(lambda: "serving fleet" in group.log("server"), 60, "the server to serve")
        # Execute: another process connects with the server's client id (a second server, a copy of the state)
        intruder = MqttTransport(BrokerAddress.parse(mosquitto_url), f"genfl-{fleet}-server", session_expiry_s=0)
        intruder.connect()
        try:
            wait_for(lambda: "another client took the session" in group.log("server"), 30, "the server to see it")
            connects = group.log("server").count("connected to")
            time.sleep(5.0)  # the fight went on every 1-3 s before
            # Assert: the server said what happened and yields for a while instead of knocking the other off
            assert group.log("server").count("connected to") == connects
        finally:
            intruder.close()
    assert "is a second process using this identity? Reconnecting in 60 s" in group.log("server")


def test_a_restored_older_state_publishes_no_task_unless_the_operator_says_so(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: a fleet at round 1 is backed up, then goes on to round 3 with its board
    import shutil

    state, backup = tmp_path / "server", tmp_path / "backup"
    serve = ("--model", "cnn-digits", "--min-devices", "1", "--broker", mosquitto_url, "--local-epochs", "1")
    with processes(tmp_path) as group:
        try:
            group.agent("board", "board-1", fleet, mosquitto_url, "digits")
            assert group.server("s1", state, fleet, *serve, "--rounds", "1").wait(timeout=120) == 0
            shutil.copytree(state, backup)
            assert group.server("s2", state, fleet, *serve, "--rounds", "3").wait(timeout=120) == 0
            wait_for(lambda: "task for round 3" in group.log("board"), 30, "the board to take round 3")
            # (the board is now at round 3; the backup at round 1)
            tasks_before = group.log("board").count("task for round")
            # Execute 1: the backup (at round 1) is served while the board is at round 3
            stale = group.server("s3", backup, fleet, *serve, "--rounds", "5")
            code = stale.wait(timeout=60)
            # Assert 1: it stops with one line, and the board got no task from it
            assert code == 1, group.log("s3")[-2000:]
            last = group.log("s3").strip().splitlines()[-1]
            assert "board-1 took round 3, but this state is at round 1" in last and "--accept-older-state" in last
            assert group.log("board").count("task for round") == tasks_before
            # Execute 2: the operator says to go on from the backup's model
            resumed = group.server("s4", backup, fleet, *serve, "--rounds", "4", "--accept-older-state")
            assert resumed.wait(timeout=120) == 0, group.log("s4")[-2000:]
        finally:
            clear_retained(mosquitto_url, fleet, ["board-1"])
    # Assert 2: the rounds went on after the fleet's (round 4), from the backup's round-1 model
    rounds = [r.round for r in JournalReader(backup).rounds()]
    assert rounds == [1, 4]
    assert (
        "task for round 4" in group.log("board")
        and "task for round 2" not in group.log("board").split("task for round 3")[-1]
    )

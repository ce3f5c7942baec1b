"""One board's state topic in an attacker's hands, on a real fleet: a real server and a real agent over
Mosquitto, and an outsider replaying the board's state and will. The coordinator refuses the replays, the agent
answers its will at a bounded pace, and the rounds go on."""

from __future__ import annotations

import queue
import time
from pathlib import Path

from cloud_server.rounds._journal_reader import JournalReader
from protocol import DeviceState, decode_message, encode_message
from tests.system._helpers import clear_retained, mqtt_client, processes, wait_for

REPLAYS = 200


def test_replayed_states_and_wills_of_a_real_board_are_refused_and_the_rounds_go_on(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: a fleet of one board that trains slowly enough for the replays to land inside its rounds
    state = tmp_path / "server"
    journal = JournalReader(state)
    topic = f"genfl/{fleet}/devices/board-1/state"
    with processes(tmp_path) as group:
        try:
            group.server("server", state, fleet, "--model", "cnn-digits", "--min-devices", "1", "--rounds", "3",
                         "--broker", mosquitto_url, "--local-epochs", "2")  # fmt: skip
            group.agent("board", "board-1", fleet, mosquitto_url, "digits")
            wait_for(lambda: journal.rounds(), 90, "round 1 to open")
            with mqtt_client(mosquitto_url, f"{fleet}-outsider") as outsider:
                seen: queue.Queue[bytes] = queue.Queue()
                outsider.on_message = lambda client, userdata, message: seen.put(message.payload)
                outsider.subscribe(topic, qos=1)
                online = seen.get(timeout=30)  # the board's retained state: online, numbered
                captured = decode_message(online, DeviceState)
                assert captured.state == "online" and captured.session is not None and captured.sequence
                # its will: the same run, number 0 (an open fleet signs nothing, so the bytes are the will's)
                will = encode_message(DeviceState(device_id="board-1", state="offline",
                                                  num_samples=captured.num_samples, session=captured.session,
                                                  sequence=0))  # fmt: skip
                # Execute: the state replayed, then the will, again and again
                for _ in range(REPLAYS):
                    outsider.publish(topic, online, qos=1)
                for _ in range(REPLAYS // 4):
                    outsider.publish(topic, will, qos=1).wait_for_publish(5)
                outsider.publish(topic, online, qos=1).wait_for_publish(5)
            wait_for(lambda: len(journal.closed_rounds()) >= 3, 300, "3 rounds",
                     progress=lambda: len(journal.closed_rounds()))  # fmt: skip
            time.sleep(1.0)  # the last counts reach the journal
            rejected = journal.rejected()
            answers = group.log("board").count("the broker says we are offline")
        finally:
            clear_retained(mosquitto_url, fleet, ["board-1"])
    # Assert: every replay refused (as a replay, or past the board's rate), the board's answers to its will
    # bounded, and the fleet's rounds all closed with the board's updates
    refused = rejected.get("replayed-state", 0) + rejected.get("rate-limited", 0)
    print({"rejected": rejected, "will_answers": answers})
    assert refused >= REPLAYS + REPLAYS // 4 - 2, rejected
    assert 1 <= answers <= 3, answers  # one at once, the next when 10 s are over
    closed = journal.closed_rounds()
    assert len(closed) == 3 and all(len(journal.updates(r.round)) == 1 for r in closed), rejected

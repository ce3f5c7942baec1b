"""The server's journal: what a restart finds in the state folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cloud_server.rounds._journal import ClosedRound
from protocol import blob_id


def test_a_damaged_latest_checkpoint_resumes_from_the_blob_store_or_is_a_model_error_naming_it(tmp_path: Path) -> None:
    # Prepare: a state with one closed round
    from cloud_server import SqliteJournal
    from protocol import ModelError, TrainConfig, encode_tensors

    journal = SqliteJournal(tmp_path)
    start = encode_tensors({"w": np.zeros(2, np.float32)})
    closed = encode_tensors({"w": np.ones(2, np.float32)})
    journal.start("toy", "f", start, ("a", "b"))
    journal.round_opened(1, time.time(), "m", {"d": TrainConfig()}, None)
    journal.round_closed(1, ClosedRound(closed, blob_id(closed), timed_out=False, accuracy=None, loss=None,
                         train_loss=0.0))  # fmt: skip
    checkpoint = journal.checkpoint_path(1)
    journal.close()
    checkpoint.write_bytes(closed[:-100])  # truncated
    # Execute / Assert: the blob store's copy is whole, so the state resumes from it
    again = SqliteJournal(tmp_path)
    resumed = again.resume()
    assert resumed is not None and resumed.global_blob == closed and resumed.round_number == 1
    # Execute / Assert: without that copy it is a model error (exit 4) that names the file
    (tmp_path / "blobs" / blob_id(closed)).unlink()
    with pytest.raises(ModelError, match=r"round-0001\.safetensors\) is damaged") as caught:
        again.resume()
    assert caught.value.exit_code == 4
    again.close()


def test_a_retained_state_a_restarted_server_gets_does_not_move_last_seen(tmp_path: Path) -> None:
    from cloud_server import SqliteJournal
    from cloud_server.ops._fleet_view import fleet_rows

    journal = SqliteJournal(tmp_path)
    journal.device_seen("cam-1", True, 40, None)
    journal.close()
    seen = fleet_rows(tmp_path)[0]["last_seen"]
    time.sleep(0.05)
    again = SqliteJournal(tmp_path)  # the server restarted; the broker hands it the same retained state
    again.device_seen("cam-1", True, 40, None, retained=True)
    assert fleet_rows(tmp_path)[0]["last_seen"] == seen
    again.device_seen("cam-1", False, 40, None, retained=True)  # news (its will): seen now
    assert fleet_rows(tmp_path)[0]["last_seen"] > seen
    again.close()


def test_the_reader_sees_what_the_journal_wrote_and_an_absent_or_broken_state_as_empty(tmp_path: Path) -> None:
    # Prepare: round 1 closed with two updates and a failure, round 2 open; a refusal counted
    from cloud_server import SqliteJournal
    from cloud_server.rounds._journal import AcceptedUpdate
    from cloud_server.rounds._journal_reader import JournalReader
    from protocol import TrainConfig, encode_tensors

    journal = SqliteJournal(tmp_path / "state")
    start = encode_tensors({"w": np.zeros(2, np.float32)})
    journal.start("toy", "f", start, ("a", "b"))
    journal.device_seen("d1", True, 10, (4.0, 6.0))
    journal.round_opened(1, 100.0, "m", {"d1": TrainConfig(), "d2": TrainConfig(), "d3": TrainConfig()}, None)
    for device, evaluated in (("d1", 0.5), ("d2", None)):
        journal.update_accepted(1, AcceptedUpdate(device, 10, 0.3, 0.7, 1.5, start, evaluated))
    journal.failure_recorded(1, "d3", "out of memory")
    journal.round_closed(1, ClosedRound(start, blob_id(start), timed_out=True, accuracy=0.6, loss=1.1,
                         train_loss=0.3, report={"sent": True}, bytes_up=5, bytes_down=7))  # fmt: skip
    journal.round_opened(2, 200.0, "m", {"d1": TrainConfig()}, None)
    journal.rejected("replay")
    journal.close()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.sqlite3").write_bytes(b"not a database")
    # Execute
    reader = JournalReader(tmp_path / "state")
    rounds = reader.rounds()
    # Assert
    assert reader.exists() and reader.classes() == ("a", "b")
    assert [(r.round, r.closed is not None) for r in rounds] == [(1, True), (2, False)]
    first = rounds[0]
    assert (first.accepted, first.failed, first.total_weight, first.timed_out, first.accuracy) == (2, 1, 20, True, 0.6)
    assert first.picked == ("d1", "d2", "d3") and first.report == {"sent": True} and first.bytes_down == 7
    assert [(u.device_id, u.eval_accuracy) for u in reader.updates(1)] == [("d1", 0.5), ("d2", None)]
    assert reader.updates(2) == [] and [f.reason for f in reader.failures()] == ["out of memory"]
    assert reader.rejected() == {"replay": 1}
    assert [(d.device_id, d.label_counts) for d in reader.devices()] == [("d1", "[4.0, 6.0]")]
    for empty in (JournalReader(tmp_path / "nowhere"), JournalReader(tmp_path / "broken")):
        assert not empty.exists() and empty.rounds() == [] and empty.rejected() == {} and empty.classes() is None

"""The server's journal: what a restart finds in the state folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

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
    journal.round_closed(1, closed, blob_id(closed), total_weight=1, timed_out=False, accuracy=None, loss=None,
                         train_loss=0.0)  # fmt: skip
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
    from cloud_server._fleet_view import fleet_rows

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
